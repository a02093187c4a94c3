"""Bundles: a repository's snapshots as one verified file, for moving between machines
that share no network.

    export_bundle("tank/data/survey", "survey.dsgb")                          # full history
    export_bundle("tank/data/survey", "week.dsgb", since="dsg-commit-...")    # incremental
    inspect_bundle("week.dsgb"); verify_bundle("week.dsgb")                   # no pool needed
    import_bundle("survey.dsgb", "vault/survey", mountpoint="/srv/survey", allow="vault")

A bundle holds one ZFS send stream per snapshot (the first full, or incremental from the
``since`` base; then each incremental from the one before), the snapshots' names, GUIDs
and our user properties (a send stream carries neither), the repository's owner and
mode, and checksums of every part (``_bundle_format``).

Landing, all or nothing:

* **full** bundle: received into ``REPO.dsg-recv-TX`` (never mounted while received), its
  properties set, then renamed to ``REPO``: the rename is the commit point. A crash before
  it leaves only ``REPO.dsg-recv-TX``, which recovery destroys; ZFS itself discards a
  stream cut short.
* **incremental** bundle: applies only onto the repository whose latest snapshot has the
  bundle's base GUID and which has no file changes since it (those would be lost). The
  repository is marked (``dsg-storage:import``) before the first stream is received and
  unmarked, with the snapshots' properties set, in one sync task at the end: the commit
  point. A failure, or recovery after a crash, while the mark is there destroys the
  snapshots received and rolls the repository back to the base.

Every bundle is verified completely before anything changes. ZFS then reads each stream
straight from the file (no copy through this process); a file changed after the
verification is caught by the record check before the receive, or by ZFS's own stream
checksums during it (all or nothing, as above).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import attrs

from .. import names as _names
from .._libc import libc
from .._version import __version__
from ..core.history import lineage
from ..core.options import check_mountpoint, parse_mode
from ..core.records import Phase
from ..core.repository import Repository
from ..core.view import observe
from ..errors import (
    BundleError,
    ConflictError,
    DatasetExistsError,
    InvalidArgumentError,
    RepositoryNotFoundError,
    TransactionInProgressError,
)
from ..hostfs import OutputFile
from ..names import P_IMPORT, P_INHERITS, P_MODE, P_MOUNTPOINT, P_OWNER, P_REPO, P_STATE
from ..zfs.allow import AllowList
from ..zfs.boundary import open_zfs, zfs_version
from ..zfs.errors import DatasetChangedError
from ..zfs.port import Batch, Snapshot, ZfsPort
from . import format as _bundle_format
from . import lockfile as _lockfile
from .format import BundleInfo, ProgressFn
from .lockfile import LockDiff, LockedCommit, LockFile

KIND = "dsg-storage bundle"
log = logging.getLogger("dsg_storage")


@attrs.frozen
class ImportResult:
    repository: str
    kind: str  # full | incremental
    snapshots: tuple[str, ...]  # received, short names, oldest first
    mountpoint: str | None


def _transferable(snapshots: Sequence[Snapshot]) -> list[Snapshot]:
    """The snapshots a bundle carries: all but a transaction's temporary base."""
    return [s for s in snapshots if not s.short_name.startswith("dsg-base-")]


def _pick(chain: list[Snapshot], short: str, what: str, repo: str) -> int:
    short = short.split("@", 1)[-1]
    for index, snap in enumerate(chain):
        if snap.short_name == short:
            return index
    raise InvalidArgumentError(f"{repo} has no snapshot {short} (for {what})", dataset=repo)


def export_bundle(
    repo: str,
    output: str | os.PathLike[str] | OutputFile,
    *,
    snapshot: str | None = None,
    since: str | None = None,
    progress: ProgressFn | None = None,
    zfs: ZfsPort | None = None,
) -> BundleInfo:
    """Write ``repo``'s snapshots up to ``snapshot`` (default: the latest) to ``output``:
    all of them (full bundle), or those after ``since`` (incremental bundle).

    Streams: memory stays flat whatever the size. The file appears under its name only
    once complete (written to a temporary name beside it, fsynced, renamed); after a
    crash at most a ``.partial`` file is left beside it. Nothing in the pool changes.
    ``output`` may be a ``hostfs.OutputFile`` (the CLI's, under sudo: written as the
    invoking user, not replacing an existing file unless asked).
    """
    zfs = zfs or open_zfs(AllowList(()))
    repo = _names.validate_repository(repo)
    props = zfs.get_props(repo, [P_OWNER, P_MODE])
    if props is None:
        raise RepositoryNotFoundError(f"repository {repo} does not exist", dataset=repo)
    chain = _transferable(lineage(zfs, repo))
    if not chain:
        raise InvalidArgumentError(f"{repo} has no snapshot to export", dataset=repo)
    last = _pick(chain, snapshot, "--snapshot", repo) if snapshot else len(chain) - 1
    first = _pick(chain, since, "--since", repo) + 1 if since else 0
    if first > last:
        raise InvalidArgumentError(f"--since {since} is not older than {chain[last].short_name}", dataset=repo)
    base = chain[first - 1] if since else None
    carried = chain[first : last + 1]
    metadata = {
        "kind": KIND,
        "type": "incremental" if base else "full",
        "repository": repo,
        "base": {"name": base.short_name, "guid": str(base.guid)} if base else None,
        "snapshots": [
            {
                "name": s.short_name,
                "guid": str(s.guid),
                "createtxg": s.createtxg,
                "creation": s.creation,
                "user_props": dict(s.user_props),
            }
            for s in carried
        ],
        "owner": props.get(P_OWNER),
        "mode": props.get(P_MODE),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "zfs_version": zfs_version(),
        "dsg_storage_version": __version__,
    }
    # The partial file is created O_EXCL|O_NOFOLLOW under a random name beside the
    # target (hostfs.OutputFile): a planted link or a guessed name redirects nothing.
    out = output if isinstance(output, OutputFile) else OutputFile(output)
    steps = list(zip([base, *carried[:-1]], carried, strict=True))  # (from, to); from None: a full stream
    estimate = 0
    if progress is not None:
        estimate = sum(zfs.send_space(snap.name, prev.name if prev else None) for prev, snap in steps)
    done = 0

    def send_part(snapshot: str, source: str | None, fd: int) -> None:
        start = os.lseek(fd, 0, os.SEEK_CUR)
        with _reporting(progress, lambda: os.fstat(fd).st_size - start, done, estimate):
            zfs.send_to(fd, snapshot, source)
        _start_writeback(fd)

    try:
        fd = out.open()
        with open(fd, "wb", closefd=False) as handle:
            with _bundle_format.BundleWriter(handle, metadata) as writer:
                for previous, snap in steps:
                    info = {
                        "snapshot": snap.short_name,
                        "guid": str(snap.guid),
                        "from": previous.short_name if previous else None,
                        "from_guid": str(previous.guid) if previous else None,
                    }
                    source = previous.name if previous else None
                    done += writer.add_part(info, functools.partial(send_part, snap.name, source)).size
                written = writer.close()
            handle.flush()
        out.publish()  # fsync, rename onto the target, fsync the directory
    except BaseException:
        out.discard()
        raise
    if progress is not None:
        progress(done, done)
    return written


def _offset_in(fd: int, start: int) -> int:
    return os.lseek(fd, 0, os.SEEK_CUR) - start


@contextlib.contextmanager
def _reporting(
    progress: ProgressFn | None, position: Callable[[], int], base: int, total: int | None
) -> Iterator[None]:
    """While ZFS sends or receives (it reports nothing until done), show how far it has
    got (the file's size, or its offset) four times a second. Display only: nothing waits
    on it, and its timing changes nothing but the progress shown."""
    if progress is None:
        yield
        return
    stop = threading.Event()

    def report() -> None:
        while not stop.wait(0.25):
            done = base + position()
            progress(done, max(total or 0, done) or None)

    thread = threading.Thread(target=report, name="dsg-storage-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _start_writeback(fd: int) -> None:
    """Start writing the file's dirty pages to disk now (sync_file_range(2), asynchronous),
    so the final fsync overlaps the digest pass instead of following it."""
    sync_file_range = libc().sync_file_range
    sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    if sync_file_range(fd, 0, 0, 2) != 0:  # SYNC_FILE_RANGE_WRITE; a failure only costs speed
        log.debug("sync_file_range: %s", os.strerror(ctypes.get_errno()))


def inspect_bundle(path: str | os.PathLike[str]) -> BundleInfo:
    """What a bundle holds (metadata, parts, sizes), reading only its ends; no pool needed."""
    info = _bundle_format.inspect(path)
    _check_kind(info, path)
    return info


def verify_bundle(path: str | os.PathLike[str], *, progress: ProgressFn | None = None) -> BundleInfo:
    """Check a bundle's structure and every checksum (one pass); raises a BundleError."""
    info = _bundle_format.verify(path, progress=progress)
    _check_kind(info, path)
    return info


def _check_kind(info: BundleInfo, path: str | os.PathLike[str]) -> None:
    meta = info.metadata
    if meta.get("kind") != KIND or meta.get("type") not in ("full", "incremental"):
        raise BundleError(f"{path} is a bundle file but not a repository bundle (kind {meta.get('kind')!r})")
    if len(info.parts) != len(meta.get("snapshots") or ()):
        raise BundleError(f"{path}: {len(info.parts)} streams for {len(meta['snapshots'])} snapshots")


def import_bundle(
    path: str | os.PathLike[str],
    into: str,
    *,
    mountpoint: str | None = None,
    allow: AllowList | str | None = None,
    zfs: ZfsPort | None = None,
    progress: ProgressFn | None = None,
    lock_timeout: float = 10.0,
) -> ImportResult:
    """Receive a bundle into repository ``into``: a full bundle creates it (refused if it
    exists; ``mountpoint`` as for an init, required unless inherited), an incremental one
    applies onto the base it was made from.

    Verifies the whole bundle first: a bad one changes nothing. Lands completely or not
    at all, also across a crash (see the module's docstring; ``recover`` finishes the
    cleanup after a crash).
    """
    zfs = zfs if zfs is not None else open_zfs(allow)
    into = _names.validate_repository(into)
    zfs.allow.check(into)
    mountpoint = check_mountpoint(mountpoint) if mountpoint is not None else None
    halves = None if progress is None else (lambda done, total: progress(done, 2 * (total or 0) or None))
    info = verify_bundle(path, progress=halves)
    repository = Repository(into, zfs=zfs, lock_timeout=lock_timeout)
    with repository.exclusive():
        repository.recover()
        if info.metadata["type"] == "full":
            return _import_full(zfs, repository, path, info, mountpoint, progress)
        return _import_incremental(zfs, repository, path, info, progress)


def _stream_parts(
    zfs: ZfsPort,
    path: str | os.PathLike[str],
    info: BundleInfo,
    target: str,
    progress: ProgressFn | None,
    *,
    force: bool,
) -> list[str]:
    """Receive every part of the (verified) bundle into ``target``, in order, ZFS reading
    each stream straight from the file."""
    received = []
    done = info.total_size  # the verify pass was the first half of the progress
    parts = _bundle_format.part_ranges(path, expect=info)  # raises if the file changed since verify
    fd = os.open(path, os.O_RDONLY)
    try:
        for part in parts:
            short = part.info["snapshot"]
            os.lseek(fd, part.offset, os.SEEK_SET)
            position = functools.partial(_offset_in, fd, part.offset)
            with _reporting(progress, position, done, 2 * info.total_size):
                zfs.receive_from(fd, f"{target}@{short}", force=force)
            end = os.lseek(fd, 0, os.SEEK_CUR)
            if end != part.offset + part.size:  # ZFS's stream ended elsewhere than the bundle says
                raise BundleError(f"{path}: part {part.index + 1} is {end - part.offset} bytes as ZFS read it")
            received.append(short)
            done += part.size
            if progress:
                progress(done, 2 * info.total_size)
    finally:
        os.close(fd)
    return received


def _snapshot_props(batch: Batch, target: str, info: BundleInfo) -> Batch:
    for snap in info.metadata["snapshots"]:
        if snap["user_props"]:
            batch = batch.set(f"{target}@{snap['name']}", snap["user_props"])
    return batch


def _import_full(
    zfs: ZfsPort,
    repository: Repository,
    path: str | os.PathLike[str],
    info: BundleInfo,
    mountpoint: str | None,
    progress: ProgressFn | None,
) -> ImportResult:
    into = repository.name
    if zfs.exists(into):
        raise DatasetExistsError(
            f"repository {into} exists: a full bundle creates a repository",
            dataset=into,
            hint="import into a new name, or import an incremental bundle",
        )
    parent = into.rsplit("/", 1)[0]
    view = observe(zfs, into, conflicts=False)
    if parent not in view.family:
        raise RepositoryNotFoundError(f"parent dataset {parent} of {into} does not exist", dataset=parent)
    inherited = view.inherited_mountpoint()
    target = mountpoint or inherited
    if target is None:
        raise InvalidArgumentError(f"{into} would have no mountpoint: give one", dataset=into)
    inherits = target == inherited  # as for transactions: no local mountpoint property then
    meta = info.metadata
    temp = _names.receive_dataset(into, _names.new_tx_id())
    try:
        _stream_parts(zfs, path, info, temp, progress, force=False)
    except BaseException:
        if zfs.exists(temp):  # earlier parts landed: throw them away with the rest
            zfs.destroy_with_snapshots(temp)
        raise
    head_props = {
        P_REPO: into,
        P_MOUNTPOINT: target,
        P_INHERITS: "yes" if inherits else "no",
        P_OWNER: str(meta.get("owner") or f"{os.getuid()}:{os.getgid()}"),
        P_MODE: f"{parse_mode(meta.get('mode') or '0755'):04o}",
        P_STATE: Phase.COMMITTED.value,
    }
    zfs.apply(_snapshot_props(Batch().set(temp, head_props), temp, info))
    if not inherits:
        zfs.set_mountpoint(temp, target)  # the property only: recover() below mounts it
    zfs.rename(temp, into)  # the commit point
    repository.recover()  # mounts it where it records, owned as it records
    return ImportResult(into, "full", tuple(s["name"] for s in meta["snapshots"]), target)


def _import_incremental(
    zfs: ZfsPort, repository: Repository, path: str | os.PathLike[str], info: BundleInfo, progress: ProgressFn | None
) -> ImportResult:
    into = repository.name
    meta = info.metadata
    if not zfs.exists(into):
        raise RepositoryNotFoundError(
            f"repository {into} does not exist: an incremental bundle applies onto its base {meta['base']['name']}",
            dataset=into,
        )
    if repository.pending():
        raise TransactionInProgressError(f"{into} has an open transaction: finish it first", dataset=into)
    chain = _transferable(lineage(zfs, into))
    base_guid = int(meta["base"]["guid"])
    latest = chain[-1] if chain else None
    if latest is None or latest.guid != base_guid:
        have = f"{latest.short_name} (guid {latest.guid})" if latest else "no snapshot"
        where = next((s.short_name for s in chain if s.guid == base_guid), None)
        detail = f"; {where} is there but is not the latest" if where else ""
        raise BundleError(
            f"wrong base: the bundle applies onto {meta['base']['name']} (guid {base_guid}); "
            f"{into}'s latest snapshot is {have}{detail}. Nothing was changed",
        )
    names = {s.short_name for s in chain}
    clash = [s["name"] for s in meta["snapshots"] if s["name"] in names]
    if clash:
        raise BundleError(f"{into} already has snapshot(s) {', '.join(clash)}. Nothing was changed")
    changed = _changes_since(zfs, into, latest)
    if changed:
        raise ConflictError(
            f"{into} has changes since {latest.short_name} that the import would discard: "
            + ", ".join(changed[:5])
            + (" ..." if len(changed) > 5 else ""),
            dataset=into,
            hint="commit them (or roll them back) and export a bundle from the new base",
        )
    tx = _names.new_tx_id()
    zfs.apply(Batch().set(into, {P_IMPORT: f"{tx} {latest.short_name}"}))
    try:
        received = _stream_parts(zfs, path, info, into, progress, force=True)
        zfs.apply(_snapshot_props(Batch(), into, info).set(into, {P_IMPORT: ""}))  # the commit point
    except BaseException:
        repository.recover()  # the import mark is there: recovery undoes what arrived
        raise
    repository.recover()
    return ImportResult(into, "incremental", tuple(received), None)


def _changes_since(zfs: ZfsPort, repo: str, snap: Snapshot) -> list[str]:
    """Files changed in ``repo`` since ``snap`` (a mount's own metadata does not count).
    The check runs in syncing context, so it sees writes not synced yet."""
    try:
        zfs.apply(Batch().require_unchanged(repo, snap.short_name))
    except DatasetChangedError:
        return zfs.changed_files(snap.name, repo)
    return []


def _locked_commits(zfs: ZfsPort, repo: str) -> list[LockedCommit]:
    return [LockedCommit(c.name, c.guid) for c in Repository(repo, zfs=zfs).history()]


def write_lock(repo: str, path: str | os.PathLike[str] | None = None, *, zfs: ZfsPort | None = None) -> LockFile:
    """A lock file of ``repo``'s commits (names and GUIDs, in order), written atomically to
    ``path`` when given (after a crash: the old file or the new one, whole)."""
    zfs = zfs or open_zfs(AllowList(()))
    lock = _lockfile.make(_names.validate_repository(repo), _locked_commits(zfs, repo))
    if path is not None:
        _lockfile.write(path, lock)
    return lock


def check_lock(path: str | os.PathLike[str], repo: str, *, zfs: ZfsPort | None = None) -> LockDiff:
    """How ``repo``'s commits differ from the lock file at ``path`` (``.matches``)."""
    zfs = zfs or open_zfs(AllowList(()))
    return _lockfile.compare(_lockfile.read(path), _locked_commits(zfs, _names.validate_repository(repo)))


def write_progress(stream: Any = None, *, label: str = "") -> ProgressFn | None:
    """A progress bar on a terminal (stderr), None (quiet) otherwise."""
    stream = stream or sys.stderr
    if not stream.isatty():
        return None
    last = [0.0]

    def report(done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - last[0] < 0.2 and done != total:
            return
        last[0] = now
        mib = done / (1 << 20)
        if total:
            stream.write(f"\r{label} {100 * done / total:5.1f}%  {mib:,.1f} / {total / (1 << 20):,.1f} MiB")
        else:
            stream.write(f"\r{label} {mib:,.1f} MiB")
        if done == total:
            stream.write("\n")
        stream.flush()

    return report


def describe(info: BundleInfo) -> list[str]:
    """Human lines for ``bundle inspect``."""
    meta = info.metadata
    lines = [
        f"bundle:      format {info.format_version}, {meta['type']}, {info.file_size:,} bytes",
        f"repository:  {meta['repository']} (owner {meta.get('owner')}, mode {meta.get('mode')})",
        f"base:        {meta['base']['name']} (guid {meta['base']['guid']})" if meta.get("base") else "base:        -",
        f"created:     {meta['created']} by dsg-storage {meta['dsg_storage_version']}, ZFS {meta['zfs_version']}",
        f"snapshots:   {len(meta['snapshots'])}",
    ]
    for snap, part in zip(meta["snapshots"], info.parts, strict=True):
        lines.append(f"  {snap['name']}\tguid {snap['guid']}\t{part.size:,} bytes\tdigest {part.digest}")
    return lines


__all__ = [
    "ImportResult",
    "check_lock",
    "describe",
    "export_bundle",
    "import_bundle",
    "inspect_bundle",
    "verify_bundle",
    "write_lock",
    "write_progress",
]
