"""An in-memory pool that satisfies ``ZfsPort``, for pure logic only.

It models what the core's planning depends on (datasets with their user properties and
``mountpoint``, snapshots with their GUIDs, renames, batches, mounts, and a send and a
receive of one snapshot's stream) so that recovery's loop, an export and an import can
be run to their end without ZFS. It claims nothing about ZFS itself: every ZFS
behaviour is tested against a real pool in ``tests/zfs``.

Its send stream (``FakeZfs.send_to``) is a real BEGIN record (``transfer.sendstream``:
what the bundle checks read) followed by an END record (``drr_type`` 2, the snapshot's
GUID at byte 40, as ``dmu_replay_record_t``'s ``drr_end``): no data, since the fake holds
none. Its receive reads exactly that, and refuses what a pool refuses (a wrong base, a
full stream onto an existing dataset, an existing snapshot, a damaged or cut stream).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from dsg_storage.errors import BundleError, DatasetBusyError, DatasetExistsError, DatasetNotFoundError, ZfsError
from dsg_storage.transfer import sendstream
from dsg_storage.zfs.allow import AllowList
from dsg_storage.zfs.host import BoundarySteps, Guard
from dsg_storage.zfs.port import Batch, BatchResult, Foreign, Snapshot, ZfsPort
from dsg_storage.zfs.reads import Read, mount_flags_of

DRR_END = 2
_END = struct.Struct("<II32xQ")  # drr_type, drr_payloadlen, drr_checksum, drr_toguid
FIRST_GUID = 1 << 32  # the fake's own snapshots: a counter from here (a crafted bundle's are small)


def fake_send_stream(toname: str, toguid: int, fromguid: int = 0) -> bytes:
    """The fake pool's send stream of snapshot ``toname`` (incremental from ``fromguid``, or
    full): its BEGIN record and its END record, each ``sendstream.RECORD_SIZE`` bytes."""
    end = _END.pack(DRR_END, 0, toguid)
    return sendstream.make_begin(toname, toguid, fromguid) + end.ljust(sendstream.RECORD_SIZE, b"\0")


class FakeHost:
    def __init__(self, pool: FakeZfs) -> None:
        self.pool = pool
        self.table: dict[str, list[str]] = {}
        self.flags: dict[str, int] = {}  # path -> the mount(2) flags it was mounted with
        self.dirs: set[str] = set()
        self.owners: dict[str, tuple[int, int, int]] = {}
        self.frozen: set[str] = set()

    def mounts(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self.table.items() if v}

    def holders(self, path: str, *, writing: bool = False) -> list[str]:
        return []

    def orphaned_reader_mounts(self) -> list[tuple[str, str]]:
        return []

    def freeze(self, dataset: str, path: str, *, wait: float = 0.0) -> None:
        self.frozen.add(path)
        self.pool.steps.done("freeze", dataset)

    def thaw(self, dataset: str, path: str) -> None:
        self.frozen.discard(path)
        self.pool.steps.done("thaw", dataset)

    def mount(self, dataset: str, path: str, *, flags: int | None = None) -> None:
        self.pool.guard.check(dataset)
        if dataset not in self.pool.datasets:
            raise DatasetNotFoundError(f"{dataset}: no such dataset", dataset=dataset)
        if path in self.table.get(dataset, []):
            return
        self.make_dir(path)
        self.table.setdefault(dataset, []).append(path)
        self.flags[path] = self.pool.mount_flags(dataset) if flags is None else flags
        self.pool.steps.done("mount", dataset)

    def unmount(self, dataset: str, path: str | None = None, *, lazy: bool = False) -> None:
        self.pool.guard.check(dataset)
        for target in [path] if path else list(self.table.get(dataset, [])):
            if target in self.table.get(dataset, []):
                self.table[dataset].remove(target)
                self.frozen.discard(target)
                self.pool.steps.done("unmount", dataset)

    def mount_readonly(self, source: str, path: str) -> None:
        self.table.setdefault(source, []).append(path)

    def release_mount(self, source: str, path: str) -> None:
        self.table[source].remove(path)

    def make_dir(self, path: str) -> None:
        if path not in self.dirs:
            self.dirs.add(path)
            self.pool.steps.done("mkdir", path)

    def remove_dir(self, path: str) -> None:
        if path in self.dirs and not any(path in paths for paths in self.table.values()):
            self.dirs.discard(path)
            self.pool.steps.done("rmdir", path)

    def apply_owner(self, dataset: str, path: str, uid: int, gid: int, mode: int) -> None:
        if self.owners.get(path) != (uid, gid, mode):
            self.owners[path] = (uid, gid, mode)
            self.pool.steps.done("chown", path)


class FakeZfs:
    """Datasets: name -> properties (ours and ``mountpoint``, ``origin``); snapshots:
    name -> properties. ``changed`` lists files a conflict check reports per dataset;
    ``busy`` names that optional destroys skip."""

    def __init__(self, allow: Iterable[str] = ("tank",)) -> None:
        self.guard = Guard(AllowList(tuple(allow)))
        self._steps = BoundarySteps()
        self.datasets: dict[str, dict[str, str]] = {}
        self.snaps: dict[str, dict[str, str]] = {}
        self.changed: dict[str, list[str]] = {}
        self.busy: set[str] = set()
        self._host = FakeHost(self)
        self._txg = 100
        self._guid = FIRST_GUID

    # the Protocol's attributes
    @property
    def allow(self) -> AllowList:
        return self.guard.allow

    @property
    def read_only(self) -> bool:
        return False

    @property
    def host(self) -> FakeHost:
        return self._host

    @property
    def steps(self) -> BoundarySteps:
        return self._steps

    # reads
    def exists(self, name: str) -> bool:
        return name in self.datasets or name in self.snaps

    def get_props(self, dataset: str, names: Iterable[str]) -> dict[str, Any] | None:
        if dataset in self.snaps:  # a snapshot's: its user properties, createtxg and guid
            self.guid_of(dataset)
            return {k: v for k, v in self.snaps[dataset].items() if k in names}
        if dataset not in self.datasets:
            return None
        props: dict[str, Any] = dict(self.datasets[dataset])
        for name in names:
            if name.startswith("written@"):
                props[name] = 1 if self.changed.get(dataset) else 0
        return {k: v for k, v in props.items() if k in names}

    def snapshots(self, dataset: str) -> list[Snapshot]:
        found = [(name, props) for name, props in self.snaps.items() if name.split("@")[0] == dataset]
        found.sort(key=lambda item: int(item[1].get("createtxg", "0")))
        return [
            Snapshot(
                name,
                guid=self.guid_of(name),
                createtxg=int(p.get("createtxg", "0")),
                creation=0,
                user_props={k: v for k, v in p.items() if ":" in k},  # as ZFS lists them: user properties only
            )
            for name, p in found
        ]

    def guid_of(self, snapshot: str) -> int:
        """``snapshot``'s GUID: the one it was made or received with (kept in its
        properties, so it moves with renames and promotions); a snapshot a test put into
        ``snaps`` by hand gets the next one now."""
        props = self.snaps[snapshot]
        if "guid" not in props:
            props["guid"] = str(self._new_guid())
        return int(props["guid"])

    def _new_guid(self) -> int:
        self._guid += 1
        return self._guid

    def filesystems(self, under: str) -> dict[str, dict[str, str]]:
        return {k: dict(v) for k, v in self.datasets.items() if k == under or k.startswith(under + "/")}

    def origin_and_snapshots(self, dataset: str, *, guarded: bool = False) -> tuple[str, list[Snapshot]]:
        snapshots = self.snapshots(dataset)
        if guarded:
            guards = self._guards(dataset)
            snapshots = [attrs.evolve(s, holds=guards[s.name][0], clones=tuple(guards[s.name][1])) for s in snapshots]
        return (self.datasets.get(dataset) or {}).get("origin", ""), snapshots

    def children(self, dataset: str) -> list[str]:
        return sorted(k for k in self.datasets if k.rsplit("/", 1)[0] == dataset)

    def family(self, dataset: str) -> dict[str, dict[str, str]]:
        parent = dataset.rsplit("/", 1)[0]
        if parent not in self.datasets:
            return {}
        out = {k: dict(v) for k, v in self.datasets.items() if k == dataset or k.startswith(dataset + ".dsg-")}
        out[parent] = {"mountpoint": self.datasets[parent].get("mountpoint", "none")}
        return out

    def families(self, under: str) -> dict[str, dict[str, str]]:
        return self.filesystems(under)

    def foreign(self, dataset: str, bases: Sequence[str], *, written_of: str | None = None) -> Foreign:
        """Snapshots of ``dataset`` made after the first of ``bases`` that exists; one in
        ``busy`` is held (tag "busy"). ``written_of``: as ``get_props`` reports written@."""
        base = next((b for b in bases if b in self.snaps), "")
        after = int(self.snaps.get(base, {}).get("createtxg", "0"))
        found = [s for s in self.snapshots(dataset) if s.createtxg > after]
        written = None
        if base and written_of and written_of in self.datasets:
            written = int((self.get_props(written_of, [f"written@{base}"]) or {})[f"written@{base}"])
        return Foreign(
            tuple((s.short_name, ("busy",) if s.name in self.busy else ()) for s in found),
            base=base or None,
            written=written,
        )

    def mount_flags(self, dataset: str) -> int:
        return mount_flags_of(self.datasets.get(dataset, {}))

    def together(self, *reads: Read) -> tuple[Any, ...]:
        return tuple(read.ask(self) for read in reads)

    def _guards(self, dataset: str) -> dict[str, tuple[int, list[str]]]:
        clones: dict[str, list[str]] = {}
        for name, props in self.datasets.items():
            if "origin" in props:
                clones.setdefault(props["origin"], []).append(name)
        return {s.name: (0, clones.get(s.name, [])) for s in self.snapshots(dataset)}

    # changes
    def _need(self, name: str) -> None:
        if not self.exists(name):
            raise DatasetNotFoundError(f"{name}: no such dataset", dataset=name)

    def _absent(self, name: str) -> None:
        if self.exists(name):
            raise DatasetExistsError(f"{name}: exists", dataset=name)

    def _changed(self, op: str, target: str) -> None:
        self._txg += 1
        self.steps.done(op, target, syncs=True)

    def create(self, name: str, props: Mapping[str, str | int] | None = None) -> None:
        self.guard.check(name)
        self._absent(name)
        self.datasets[name] = {k: str(v) for k, v in (props or {}).items()}
        self.datasets[name].setdefault("mountpoint", "none")
        self._changed("create", name)

    def snapshot(self, names: Sequence[str], props: Mapping[str, str] | None = None) -> None:
        self.guard.check(*names)
        for name in names:
            self._absent(name)
            self._need(name.split("@")[0])
            self.snaps[name] = {**(props or {}), "createtxg": str(self._txg), "guid": str(self._new_guid())}
        self._changed("snapshot", names[0])

    def clone(self, name: str, origin: str, props: Mapping[str, str | int] | None = None) -> None:
        self.guard.check(name)
        self._need(origin)
        self._absent(name)
        self.datasets[name] = {"origin": origin, "mountpoint": "none", **{k: str(v) for k, v in (props or {}).items()}}
        self._changed("clone", name)

    def promote(self, name: str) -> None:
        self._promote(name)
        self._changed("promote", name)

    def _promote(self, name: str) -> None:
        """As ZFS does: the origin's snapshots up to the clone's origin move to the clone,
        and the origin becomes a clone of it."""
        origin = self.datasets[name].pop("origin", None)
        if origin is None:
            return
        source, _ = origin.split("@")
        upto = int(self.snaps[origin].get("createtxg", "0"))
        for snap in [s for s in self.snaps if s.split("@")[0] == source]:
            if int(self.snaps[snap].get("createtxg", "0")) <= upto:
                self.snaps[f"{name}@{snap.split('@')[1]}"] = self.snaps.pop(snap)
        self.datasets[source]["origin"] = f"{name}@{origin.split('@')[1]}"

    def rename(self, source: str, target: str) -> None:
        self.guard.check(source, target)
        self._need(source)
        self._absent(target)
        self.datasets[target] = self.datasets.pop(source)
        for snap in [s for s in self.snaps if s.split("@")[0] == source]:
            self.snaps[f"{target}@{snap.split('@')[1]}"] = self.snaps.pop(snap)
        for props in self.datasets.values():  # ZFS tracks an origin, not its name
            if props.get("origin", "").split("@")[0] == source:
                props["origin"] = f"{target}@{props['origin'].split('@')[1]}"
        if source in self.host.table:  # a renamed filesystem stays mounted where it was
            self.host.table[target] = self.host.table.pop(source)
        self._changed("rename", source)

    def destroy(self, name: str) -> None:
        self.guard.check(name)
        if "@" in name:
            self.destroy_snapshots([name])
            return
        self.host.unmount(name)
        self._need(name)
        del self.datasets[name]
        self._changed("destroy", name)

    def destroy_with_snapshots(self, filesystem: str) -> None:
        self.destroy_snapshots([s.name for s in self.snapshots(filesystem)])
        self.destroy(filesystem)

    def destroy_snapshots(self, names: Sequence[str]) -> None:
        if names:
            for name in names:
                self.snaps.pop(name, None)
            self._changed("destroy", names[0])

    def rollback(self, filesystem: str) -> None:
        self._changed("rollback", filesystem)

    def apply(self, batch: Batch) -> BatchResult:  # noqa: C901, PLR0912, PLR0915  one branch per batch op, as the Lua program has
        if not batch.ops:
            return BatchResult({}, {})
        self.guard.check(*batch.targets)
        ops, i = batch.ops, 0
        skipped: dict[str, int] = {}
        created: dict[str, tuple[int, int]] = {}
        while i < len(ops):
            op = ops[i]
            if op in ("V", "N"):
                name, key, value = ops[i + 1 : i + 4]
                (self.snaps if "@" in name else self.datasets)[name][key] = value
                i += 4
                continue
            if op == "I":  # back to the parent's (the fake has no inheritance: gone)
                self.datasets[ops[i + 1]].pop(ops[i + 2], None)
                i += 3
                continue
            if op == "B":  # destroy if possible, and note on the dataset what is left
                snap, dataset, key, if_kept, if_gone = ops[i + 1 : i + 6]
                kept = snap in self.busy and snap in self.snaps
                if kept:
                    skipped[snap] = 16
                else:
                    self.snaps.pop(snap, None)
                self.datasets[dataset][key] = if_kept if kept else if_gone
                i += 6
                continue
            if op == "R":  # a snapshot renamed on its dataset, if it exists and the name is free
                target = f"{ops[i + 1].split('@')[0]}@{ops[i + 2]}"
                if ops[i + 1] in self.snaps and target not in self.snaps:
                    self.snaps[target] = self.snaps.pop(ops[i + 1])
                i += 3
                continue
            name = ops[i + 1]
            if op == "S":
                guid = self._new_guid()
                self.snaps[name] = {"createtxg": str(self._txg), "guid": str(guid)}
                created[name] = (guid, self._txg)
            elif op in ("P", "Q"):  # the fake's snapshots are never held: promote always works
                self._promote(name)
            elif op in ("D", "T"):
                if "@" not in name and any(snap.startswith(name + "@") for snap in self.snaps):
                    if op == "D":  # as ZFS: a filesystem with snapshots is not destroyed
                        raise DatasetBusyError(f"{name}: has snapshots", dataset=name)
                    skipped[name] = 17
                elif name in self.busy:
                    if op == "D":
                        raise DatasetBusyError(f"{name}: busy", dataset=name)
                    skipped[name] = 16
                elif "@" in name:
                    self.snaps.pop(name, None)
                else:
                    self.datasets.pop(name, None)
            else:
                raise ZfsError(f"the fake pool does not know batch op {op}")
            i += 2
        self._changed("batch", batch.targets[0])
        return BatchResult(skipped, created)

    def set_mountpoint(self, dataset: str, path: str) -> None:
        self.datasets[dataset]["mountpoint"] = path
        self._changed("set mountpoint", dataset)
        self.host.mount(dataset, path)

    def set_native_props(self, dataset: str, props: Mapping[str, str]) -> None:
        self.datasets[dataset].update(props)
        self._changed("set", dataset)

    def changed_files(self, snapshot: str, filesystem: str) -> list[str]:
        return list(self.changed.get(filesystem, []))

    # streams: the fake's own (``fake_send_stream``), read and written through a descriptor
    def send_space(self, snapshot: str, from_snapshot: str | None = None) -> int:
        return len(self._stream(snapshot, from_snapshot))

    def send_to(self, fd: int, snapshot: str, from_snapshot: str | None = None) -> None:
        """Write ``snapshot``'s stream at ``fd``'s offset, leaving it at the stream's end
        (``lzc_send`` does). A read: nothing changes, no step is counted."""
        data = memoryview(self._stream(snapshot, from_snapshot))
        while data:
            data = data[os.write(fd, data) :]

    def _stream(self, snapshot: str, from_snapshot: str | None) -> bytes:
        if snapshot not in self.snaps:
            raise DatasetNotFoundError(f"{snapshot}: no such snapshot", dataset=snapshot)
        fromguid = 0
        if from_snapshot is not None:
            if from_snapshot not in self.snaps:
                raise DatasetNotFoundError(f"{from_snapshot}: no such snapshot", dataset=from_snapshot)
            older = int(self.snaps[from_snapshot]["createtxg"]) < int(self.snaps[snapshot]["createtxg"])
            if from_snapshot.split("@")[0] != snapshot.split("@")[0] or not older:
                raise ZfsError(f"{from_snapshot} is not an earlier snapshot of {snapshot.split('@')[0]}")
            fromguid = self.guid_of(from_snapshot)
        return fake_send_stream(snapshot, self.guid_of(snapshot), fromguid)

    def receive_from(self, fd: int, snapshot: str, *, force: bool = False) -> None:
        """Read one stream (``fake_send_stream``'s) from ``fd``'s offset, leaving it at the
        stream's end, and make ``snapshot`` with the stream's GUID, as ``lzc_receive``
        does: a full stream creates the dataset (its parent must exist, it must not); an
        incremental one applies only onto a dataset whose latest snapshot is the stream's
        base (``force`` would roll back changes since then, which the fake does not
        hold). Whatever it refuses changes nothing."""
        dataset = snapshot.split("@", 1)[0]
        self.guard.check(dataset)
        begin = self._read_stream(fd, snapshot)
        self._absent(snapshot)
        if begin.fromguid == 0:
            self._absent(dataset)
            self._need(dataset.rsplit("/", 1)[0])
            self.datasets[dataset] = {"mountpoint": "none"}
        else:
            self._need(dataset)
            have = self.snapshots(dataset)
            if not have or have[-1].guid != begin.fromguid:
                latest = f"{have[-1].name} (guid {have[-1].guid})" if have else "no snapshot"
                raise ZfsError(
                    f"cannot receive {snapshot}: the stream applies onto guid {begin.fromguid}; "
                    f"the most recent snapshot of {dataset} is {latest}"
                )
        self.snaps[snapshot] = {"createtxg": str(self._txg), "guid": str(begin.toguid)}
        self._changed("receive", snapshot)

    def _read_stream(self, fd: int, snapshot: str) -> sendstream.BeginRecord:
        """One stream's two records from ``fd``; a damaged or cut one is refused."""
        head = _read_exactly(fd, sendstream.RECORD_SIZE)
        try:
            begin = sendstream.parse_begin(head, f"the stream for {snapshot}")
        except BundleError as exc:
            raise ZfsError(f"cannot receive {snapshot}: invalid stream ({exc})") from None
        end = _read_exactly(fd, sendstream.RECORD_SIZE)
        kind, _, toguid = _END.unpack_from(end) if len(end) == sendstream.RECORD_SIZE else (None, 0, 0)
        if kind != DRR_END or toguid != begin.toguid:
            raise ZfsError(f"cannot receive {snapshot}: the stream is damaged or cut short (no END record)")
        if begin.header_type != sendstream.SUBSTREAM:
            raise ZfsError(f"cannot receive {snapshot}: the fake pool receives the stream of one snapshot only")
        return begin


def _read_exactly(fd: int, size: int) -> bytes:
    """Up to ``size`` bytes from ``fd`` (fewer only at the end of the file)."""
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _satisfies_the_port(fake: FakeZfs) -> ZfsPort:
    return fake  # mypy checks here that FakeZfs is a ZfsPort, without an ignore
