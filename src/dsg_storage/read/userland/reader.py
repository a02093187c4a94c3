"""``open_userland``: read an exported pool with no kernel import, no ZFS module, no root.

    with open_userland("/backups/site-a.img") as reader:   # reader.mode is Mode.USERLAND
        reader.history("tank/data/survey")

One helper process per session imports the pool read-only into libzpool's private
namespace (``helper.py``); this process asks it for datasets, directory trees, stats
and file bytes. Nothing is mounted, nothing is imported in the kernel, and the pool files
are opened read-only: a crash of either process leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat as stat_
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, BinaryIO

from ... import names as _names
from ...core.history import find_snapshot
from ...errors import InvalidArgumentError, PoolForeignError, PoolNotFoundError, PoolOpenError, RepositoryNotFoundError
from ...zfs import zpool as _zpool
from ...zfs.port import Catalog
from .. import xattrs as _xattrs
from ..reader import FileEntry, Mode, Reader
from . import keys as _keys
from . import protocol, provision
from .catalog import PoolCatalog
from .client import DEFAULT_TIMEOUT, WINDOW, Helper, HelperRequestError
from .keys import EncryptionKeyError
from .protocol import UserlandError

POOL_STATE_ACTIVE = 0
#: errnos of a block that failed its checksum (ECKSUM is EBADE in libzpool) or an I/O error.
_DAMAGED = (52, 5)
_READ_SIZE = 8 << 20
_EACCES = 13  # a locked dataset, a wrong key


class DamagedFileError(UserlandError):
    """A file's blocks failed their checksums: nothing of it is returned."""


def _kind(mode: int) -> str:
    if stat_.S_ISDIR(mode):
        return "dir"
    if stat_.S_ISLNK(mode):
        return "symlink"
    return "file" if stat_.S_ISREG(mode) else "other"


def entry_of(path: str, st: dict[str, Any]) -> FileEntry:
    """A FileEntry from a stat the helper sent (checked by ``protocol.stat_record``)."""
    mode = int(st["mode"])
    target = None
    if stat_.S_ISLNK(mode) and st.get("symlink") is not None:
        target = os.fsdecode(bytes.fromhex(st["symlink"]).rstrip(b"\0"))
    seconds, nanos = st["mtime"]
    stored = st.get("xattrs")
    found = (
        _xattrs.bounded(
            (_xattrs.linux_name(name), None if value is None else bytes.fromhex(value)) for name, value in stored
        )
        if stored
        else ((), 0)
    )
    return FileEntry(
        path, _kind(mode), int(st["size"]), f"{stat_.S_IMODE(mode):04o}", int(st["uid"]), int(st["gid"]),
        seconds * 1_000_000_000 + nanos, target, *found,
    )  # fmt: skip


class UserlandReader(Reader):
    """A Reader whose pool is read by libzpool in a helper process."""

    def __init__(self, helper: Helper, catalog: PoolCatalog, *, pool: str, userland: provision.Userland) -> None:
        super().__init__(None, mode=Mode.USERLAND, pool=pool)
        self.helper = helper
        self.catalog = catalog
        self.userland = userland

    @property
    def _catalog(self) -> Catalog:
        return self.catalog

    def describe(self) -> str:
        where = (
            "the host's OpenZFS" if self.userland.root is None else f"OpenZFS {self.userland.version} (private copy)"
        )
        return f"userland, pool {self.pool}, read by libzpool of {where} in pid {self.helper.pid}, no kernel import"

    def _source(self, repo: str, commit: str | None) -> str:
        incore = self._incore(repo)
        if not self.catalog.exists(incore):
            raise RepositoryNotFoundError(f"repository {repo} does not exist", dataset=repo)
        if commit is None:
            return incore
        short = commit.split("@", 1)[-1]
        if not _names.is_snapshot_short(short):
            raise InvalidArgumentError(f"{commit!r} is not a snapshot name")
        real = (
            f"{incore}@{short}"
            if self.catalog.exists(f"{incore}@{short}")
            else find_snapshot(self.catalog, incore, short)
        )
        if not real:
            raise RepositoryNotFoundError(f"{repo} has no commit {short}", dataset=repo)
        return real

    def _locate(
        self, repo: str, commit: str | None, path: str, *, fetch: bool = False
    ) -> tuple[str, str, dict[str, Any], int | None]:
        """(dataset or snapshot, normalized path, stat of the path, bytes of it in the
        window), resolved beneath the root; ``fetch``: a regular file that fits the window
        is read into it by the same request (else the last is None)."""
        if ".." in path.split("/"):
            raise InvalidArgumentError(f"{path} leads outside the repository ('..' is not accepted)")
        norm = os.path.normpath("/" + path.lstrip("/")).lstrip("/")
        norm = "" if norm in ("", ".") else norm
        source = self._source(repo, commit)
        asked = {"fetch": WINDOW} if fetch else {}
        found = self._ask("resolve", shown=path, dataset=source, path=norm, **asked)
        st, missing, blocked = protocol.resolved(found, norm.count("/") + 1 if norm else 0)
        if missing or blocked:
            if blocked and stat_.S_ISLNK(st["mode"]):
                raise InvalidArgumentError(f"{path}: a component is a symbolic link (links are not followed)")
            raise FileNotFoundError(2, "no such file in the repository", path)
        return source, norm, st, protocol.fetched(found, st, WINDOW) if fetch else None

    def _ask(self, op: str, *, shown: str, **args: Any) -> Any:
        try:
            return self.helper.call(op, **args)
        except HelperRequestError as exc:
            if exc.code in _DAMAGED:
                raise DamagedFileError(f"{shown or '.'}: damaged on disk ({exc.message})") from None
            dataset = str(args.get("dataset", "")).split("@", 1)[0]
            record = self.catalog.records.get(dataset)
            root = _keys.encryption_root(record["props"]) if record else None
            if exc.code == _EACCES and root:
                raise EncryptionKeyError(
                    f"{self._outside(dataset)} is encrypted (encryption root {self._outside(root)}) "
                    "and its key was not given",
                    dataset=self._outside(dataset),
                    hint=f"give the key: --key-file {self._outside(root)}=FILE (open_userland(keys=...))",
                ) from None
            raise

    def files(self, repo: str, path: str = "", *, commit: str | None = None) -> list[FileEntry]:
        source, norm, st, _ = self._locate(repo, commit, path)
        entries = [entry_of(norm, st)]
        if stat_.S_ISDIR(st["mode"]):
            prefix = norm + "/" if norm else ""
            entries += [entry_of(prefix + rel, child) for rel, child in self.helper.walk(source, st["obj"])]
        return sorted(entries, key=lambda e: e.path)

    def stat(self, repo: str, path: str, *, commit: str | None = None) -> FileEntry:
        _source, norm, st, _ = self._locate(repo, commit, path)
        return entry_of(norm, st)

    def read(self, repo: str, path: str, *, commit: str | None = None) -> bytes:
        """A whole file; one that fits the window is resolved and read by one request
        (reading many small files, the round trips were half the cost)."""
        _source, _norm, _st, fetched = self._locate(repo, commit, path, fetch=True)
        if fetched is None:  # not a regular file (open says why), or larger than the window
            return super().read(repo, path, commit=commit)
        return self.helper.window_bytes(fetched)

    def open(self, repo: str, path: str, *, commit: str | None = None) -> BinaryIO:
        source, norm, st, _ = self._locate(repo, commit, path)
        if not norm:
            raise InvalidArgumentError(f"{path or '.'} is a directory, not a file")
        if stat_.S_ISLNK(st["mode"]):
            raise InvalidArgumentError(
                f"{path} is a symbolic link to {entry_of(norm, st).target!r}: "
                "cat reads regular files only ('stat' shows the link)"
            )
        if not stat_.S_ISREG(st["mode"]):
            raise InvalidArgumentError(f"{path} is not a regular file")
        where = f"{repo}/{norm}" + (f" at {commit}" if commit else "")
        raw = _UserlandFile(self.helper, source, int(st["obj"]), int(st["size"]), where)
        return io.BufferedReader(raw, buffer_size=_READ_SIZE)

    def freshness(self, kind: str, key: str) -> tuple[str, float]:
        return ("offline", 0.0)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.helper.close()


class _UserlandFile(io.RawIOBase):
    """One regular file's bytes, asked of the helper as they are read."""

    def __init__(self, helper: Helper, dataset: str, obj: int, size: int, where: str) -> None:
        self.helper, self.dataset, self.obj, self.size, self.where = helper, dataset, obj, size, where
        self.pos = 0

    def readable(self) -> bool:
        return True

    def readall(self) -> bytes:
        """The rest of the file, a window per request (RawIOBase's own would ask 8 KiB at a
        time: 65,536 requests for 512 MiB)."""
        with self._damaged():
            data = self.helper.read(self.dataset, self.obj, self.pos, max(self.size - self.pos, 0))
        self.pos += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), self.size - self.pos, _READ_SIZE)
        if want <= 0:
            return 0
        with self._damaged():
            got = self.helper.read_into(self.dataset, self.obj, self.pos, memoryview(buffer).cast("B")[:want])
        self.pos += got
        return got

    @contextlib.contextmanager
    def _damaged(self) -> Iterator[None]:
        """A block that fails its checksum is DamagedFileError, naming the offset."""
        try:
            yield
        except HelperRequestError as exc:
            if exc.code in _DAMAGED:
                raise DamagedFileError(
                    f"{self.where} is damaged on disk: a block at offset {self.pos} failed its checksum "
                    f"({exc.message}); nothing past offset {self.pos} can be read"
                ) from None
            raise


def open_userland(
    search_paths: str | Sequence[str],
    *,
    pool: str | None = None,
    force: bool = False,
    cache: str | os.PathLike[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    keys: Mapping[str, bytes] | None = None,
) -> UserlandReader:
    """Open the exported pool on ``search_paths`` (files or directories) for reading in
    userland. ``pool`` (name or numeric id) picks one among several; ``force`` reads a pool
    whose labels say it is in use (ACTIVE) on some host; ``cache`` is where a private
    OpenZFS userland is kept (default ``~/.cache/dsg-storage/userland``); ``timeout``
    bounds every request to the helper (seconds). ``keys`` unlock encrypted datasets:
    encryption root -> the contents of its key file (``""``: every root not named; see
    ``userland/keys.py``); they reach the helper on its pipe, loaded in its memory only.

    Raises PoolNotFoundError, PoolForeignError, PoolOpenError, UserlandUnavailableError
    (no OpenZFS userland to be had), EncryptionKeyError (a key is wrong or malformed),
    HelperCrashedError/HelperTimeoutError; whatever is raised, no helper process is left
    running. Nothing is written to the pool, whatever happens: a crash leaves it as it was.
    """
    paths = _zpool.split_search_paths(search_paths)
    if not paths or not any(os.path.exists(p) for p in paths):
        raise _zpool.explain_not_found(paths)
    userland = provision.locate(cache)
    helper = Helper(userland.argv(), timeout=timeout)
    try:
        configs = protocol.pool_configs(helper.call("find", paths=[p for p in paths if os.path.exists(p)]))
        config = _choose(configs, pool, paths, force=force)
        name, guid = str(config["name"]), int(config["pool_guid"])
        helper.call("import", guid=guid, name=name)
        catalog = PoolCatalog(protocol.dataset_records(helper.call("datasets", under=name)))
        _load_keys(helper, catalog, keys or {})
    except BaseException:
        helper.close()
        raise
    return UserlandReader(helper, catalog, pool=name, userland=userland)


def _load_keys(helper: Helper, catalog: PoolCatalog, keys: Mapping[str, bytes]) -> None:
    """Load the key of each encryption root that ``keys`` gives one for, or say which is wrong."""
    roots = {root for record in catalog.records.values() if (root := _keys.encryption_root(record["props"]))}
    for root, material in _keys.assign(keys, roots).items():
        record = catalog.records.get(root)
        if record is None:
            raise EncryptionKeyError(f"the encryption root {root} is not among the pool's datasets", dataset=root)
        wrapping = _keys.wrapping_key(root, record["props"], material)
        try:
            helper.call("load_key", root=root, key=wrapping.hex())
        except HelperRequestError as exc:
            if exc.code != _EACCES:
                raise
            raise EncryptionKeyError(
                f"the key given for {root} is wrong", dataset=root, hint="check the key file (and its format)"
            ) from None


def _choose(configs: list[dict[str, Any]], wanted: str | None, paths: list[str], *, force: bool) -> dict[str, Any]:
    """The pool to read among those found, or the reason none can be."""
    found = [c for c in configs if wanted in (None, c["name"], str(c["pool_guid"]))]
    if not found:
        raise _zpool.explain_not_found(paths) if not configs else PoolNotFoundError(f"no pool {wanted} on {paths}")
    if len(found) > 1:
        listed = ", ".join(f"{c['name']} (id {c['pool_guid']})" for c in found)
        raise PoolOpenError(f"several pools found: {listed}", hint="say which one with --pool NAME|ID")
    config = found[0]
    if config.get("state", POOL_STATE_ACTIVE) == POOL_STATE_ACTIVE and not force:
        host = config.get("hostname") or "an unknown host"
        raise PoolForeignError(
            f"pool {config['name']} (id {config['pool_guid']}) is marked in use (ACTIVE) by {host} "
            f"(hostid {config.get('hostid', 0):#x}) and was not exported there: it may be being written now",
            dataset=str(config["name"]),
            hint="export it on that host first, or force the read (force=True, --force) "
            "if you know nothing writes it; reads of a pool being written may be inconsistent",
        )
    return config
