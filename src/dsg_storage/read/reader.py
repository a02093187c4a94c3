"""The read API, the same whether a pool is live (imported for writing) or offline
(imported read-only by ``open_offline``): repositories, histories, files of a commit or
of the head.

    with open_live() as reader:                       # reader.mode is Mode.LIVE
        for commit in reader.history("tank/data/survey"): ...
        reader.read("tank/data/survey", "results.csv", commit="dsg-commit-20261121T101010123Z")

Names are always the pool's own (``tank/...``), even when an offline pool had to be
imported under a temporary name. Files of a commit are read from the snapshot mounted
read-only at a private directory (unmounted on ``close``), never through ``.zfs``.

Nothing here changes a pool: in offline mode every mutating call of a repository view
raises ReadOnlyError before anything happens. After a crash of a reader, at most its
private read-only mounts are left (``/tmp/dsg-storage-read-*``), which change nothing.
"""

from __future__ import annotations

import contextlib
import enum
import os
import stat as stat_
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, Self, TypeVar

import attrs

from .. import hostfs
from .. import names as _names
from ..core.history import find_snapshot, lineage
from ..core.records import Commit, commits_of
from ..errors import (
    CacheMissError,
    DatasetNotFoundError,
    InvalidArgumentError,
    ReadOnlyError,
    RepositoryNotFoundError,
    UnsafePathError,
    ZfsError,
)
from ..names import P_MODE, P_OWNER
from ..zfs.allow import AllowList
from ..zfs.boundary import open_zfs
from ..zfs.mounts import reader_dir_prefix
from ..zfs.port import Catalog, ZfsPort
from . import xattrs as _xattrs
from .cache import ReadCache, age_of

TYPE_CHECKING = False  # not typing's: see dsg_storage/__init__.py
if TYPE_CHECKING:
    from ..core.repository import Repository
    from ..core.transaction import Transaction

_R = TypeVar("_R", "RepositoryInfo", Commit)


class Mode(enum.Enum):
    """How a pool is being read: ``live`` (imported for writing, as usual),
    ``offline`` (imported read-only by us, or served from the read cache) or
    ``userland`` (read by OpenZFS's libzpool in a helper process: no kernel import)."""

    LIVE = "live"
    OFFLINE = "offline"
    USERLAND = "userland"


@attrs.frozen
class FileEntry:
    """One file of a commit or head; ``path`` is relative to the repository's root."""

    path: str
    type: str  # file, dir, symlink, other
    size: int
    mode: str  # permission bits, octal ("0644")
    uid: int
    gid: int
    mtime_ns: int
    target: str | None = None  # a symlink's target
    #: user.* extended attributes, (name, value) by name, bounded (see read/xattrs.py)
    xattrs: _xattrs.Xattrs = ()
    xattrs_omitted: int = 0  # user.* attributes past the bound, or not readable here

    @classmethod
    def of(
        cls, path: str, st: os.stat_result, target: str | None, found: tuple[_xattrs.Xattrs, int] = ((), 0)
    ) -> FileEntry:
        kind = (
            "dir"
            if stat_.S_ISDIR(st.st_mode)
            else "symlink"
            if stat_.S_ISLNK(st.st_mode)
            else "file"
            if stat_.S_ISREG(st.st_mode)
            else "other"
        )
        return cls(
            path, kind, st.st_size, f"{stat_.S_IMODE(st.st_mode):04o}", st.st_uid, st.st_gid, st.st_mtime_ns, target,
            *found,
        )  # fmt: skip


@attrs.frozen
class RepositoryInfo:
    name: str
    mountpoint: str | None  # the property, as the pool records it
    owner: str | None
    mode: str | None
    commits: int
    last_commit: str | None  # short snapshot name


def _entry_at(dirfd: int, name: str, rel: str) -> FileEntry:
    """The entry ``name`` of ``dirfd`` ("" for the directory itself), never following a link."""
    st = os.stat(name or ".", dir_fd=dirfd, follow_symlinks=False)
    target = os.readlink(name, dir_fd=dirfd) if name and stat_.S_ISLNK(st.st_mode) else None
    return FileEntry.of(rel, st, target, _xattrs.read_at(dirfd, name))


def _open_root(path: str) -> int:
    """A private mount directory we made (mkdtemp, 0700): nobody else could have swapped it."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def _has_fields(item: object, fields: dict[str, Any]) -> bool:
    """``item`` is an object holding each of ``fields`` as a value of its type."""
    return isinstance(item, dict) and all(
        name in item and isinstance(item[name], kind) and not isinstance(item[name], bool)
        for name, kind in fields.items()
    )


def commit_to_json(commit: Commit) -> dict[str, Any]:
    return {**attrs.asdict(commit), "name": commit.name}


def entry_to_json(entry: FileEntry) -> dict[str, Any]:
    """A FileEntry as ``--json`` shows it: its fields, the xattr values in base64."""
    return {**attrs.asdict(entry), "xattrs": _xattrs.to_json(entry.xattrs)}


class Reader:
    """Reads one pool. Use ``open_live`` or ``open_offline`` to get one; ``close`` (or a
    ``with`` block) releases its mounts and, offline, exports the pool it imported."""

    cached = False

    def __init__(  # noqa: PLR0913  built only by open_live/open_offline, each option named there
        self,
        zfs: ZfsPort | None,
        *,
        mode: Mode,
        pool: str | None = None,
        imported_as: str | None = None,
        altroot: str | None = None,
        cache: ReadCache | None = None,
        on_close: Callable[[], None] | None = None,
        health: str = "ONLINE",
        notes: tuple[str, ...] = (),
    ) -> None:
        self.zfs = zfs
        self.mode = mode
        self.pool = pool  # None: any pool (live)
        self.imported_as = imported_as or pool
        self.altroot = altroot
        self.cache = cache
        self.health = health
        self.notes = notes  # things the user should know (degraded, temporary name...)
        self._on_close = on_close
        self._private: str | None = None
        self._mounts: dict[str, str] = {}  # source -> private path
        self._sources: dict[str, str] = {}  # source -> the snapshot mounted for it
        self.closed = False

    @property
    def read_only(self) -> bool:
        return self.zfs is None or self.zfs.read_only

    @property
    def _zfs(self) -> ZfsPort:
        if self.zfs is None:
            raise CacheMissError("this reader serves cached reads only")
        return self.zfs

    @property
    def _catalog(self) -> Catalog:
        """Where datasets and snapshots are listed from (the userland reader has its own)."""
        return self._zfs

    def describe(self) -> str:
        """One line saying how the pool is read (shown by every command)."""
        parts = [self.mode.value]
        if self.pool:
            parts.append(f"pool {self.pool}")
        if self.imported_as and self.imported_as != self.pool:
            parts.append(f"imported read-only as {self.imported_as}")
        elif self.mode is Mode.OFFLINE:
            parts.append("imported read-only")
        if self.health != "ONLINE":
            parts.append(self.health)
        return ", ".join(parts + list(self.notes))

    # ------------------------------------------------------------------ names
    def _incore(self, name: str) -> str:
        """Our caller's name (on-disk pool name) -> the name ZFS knows now."""
        name = name.rstrip("/")
        if not name or "@" in name or "#" in name:
            raise InvalidArgumentError(f"{name!r} is not a dataset name")
        if self.pool is None:
            return name
        pool, _, rest = name.partition("/")
        if pool != self.pool:
            raise InvalidArgumentError(f"{name} is not on pool {self.pool}, the pool this reader has open")
        return f"{self.imported_as}/{rest}" if rest else str(self.imported_as)

    def _outside(self, name: str) -> str:
        """The name ZFS knows -> our caller's."""
        if self.pool is None or self.imported_as == self.pool:
            return name
        return str(self.pool) + name[len(str(self.imported_as)) :]

    def _mountpoint(self, value: str | None) -> str | None:
        if value and self.altroot and value.startswith(self.altroot.rstrip("/") + "/"):
            return value[len(self.altroot.rstrip("/")) :]
        return value

    # ------------------------------------------------------------------ reads
    def repositories(self, under: str | None = None) -> list[RepositoryInfo]:
        """Repositories (datasets dsg-storage initialized) at or below ``under`` (default:
        the whole pool), by name."""
        if under is None:
            if self.pool is None:
                raise InvalidArgumentError("say under which dataset to list repositories")
            under = self.pool
        found = self._catalog.filesystems(self._incore(under))
        if not found:
            raise RepositoryNotFoundError(f"{under} does not exist", dataset=under)
        repos = []
        for name, props in sorted(found.items()):
            if P_OWNER not in props or _names.parse_temporary(name):
                continue
            commits = self._history(name)
            repos.append(
                RepositoryInfo(
                    name=self._outside(name),
                    mountpoint=self._mountpoint(props.get("mountpoint")),
                    owner=props.get(P_OWNER),
                    mode=props.get(P_MODE),
                    commits=len(commits),
                    last_commit=commits[-1].name if commits else None,
                )
            )
        self._record("repositories", under, [attrs.asdict(r) for r in repos])
        return repos

    def history(self, repo: str) -> list[Commit]:
        """Commits of ``repo``, oldest first (names, GUIDs, times, our user properties)."""
        commits = self._history(self._incore(repo))
        self._record("history", repo, [commit_to_json(c) for c in commits])
        return commits

    def _history(self, incore: str) -> list[Commit]:
        try:
            snapshots = lineage(self._catalog, incore)
        except ZfsError as exc:
            if isinstance(exc, DatasetNotFoundError) or not self._catalog.exists(incore):
                raise RepositoryNotFoundError(
                    f"repository {self._outside(incore)} does not exist", dataset=self._outside(incore)
                ) from exc
            raise
        # Named as the repository's, also while an old head still keeps some (see lineage).
        return [attrs.evolve(c, snapshot=self._outside(f"{incore}@{c.name}")) for c in commits_of(snapshots)]

    def files(self, repo: str, path: str = "", *, commit: str | None = None) -> list[FileEntry]:
        """Every file at or below ``path`` in ``commit`` (default: the head), sorted by path.
        Nothing outside the repository is looked at: no symbolic link is followed."""
        with self._beneath(repo, commit, path) as (parent, name, rel):
            entries = [_entry_at(parent, name, rel)]
            if entries[0].type == "dir":
                top = os.open(name or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
                try:
                    # fwalk never follows a link and opens each directory it descends into
                    # relative to its parent's descriptor, checking it is the one it listed.
                    for dirpath, dirnames, filenames, dirfd in os.fwalk(".", dir_fd=top, follow_symlinks=False):
                        dirnames.sort()
                        for child in sorted(dirnames + filenames):
                            child_rel = os.path.normpath(os.path.join(rel, dirpath, child))
                            entries.append(_entry_at(dirfd, child, child_rel))
                finally:
                    os.close(top)
        return sorted(entries, key=lambda e: e.path)

    def stat(self, repo: str, path: str, *, commit: str | None = None) -> FileEntry:
        """One file's entry; a symbolic link is reported as the link itself (lstat)."""
        with self._beneath(repo, commit, path) as (parent, name, rel):
            return _entry_at(parent, name, rel)

    def open(self, repo: str, path: str, *, commit: str | None = None) -> BinaryIO:
        """A read-only binary file object for one regular file (the caller closes it),
        opened beneath the repository's root without following any link, and read
        through the very descriptor that was checked."""
        with self._beneath(repo, commit, path) as (parent, name, _rel):
            if not name:
                raise InvalidArgumentError(f"{path or '.'} is a directory, not a file")
            try:
                probe = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
            except FileNotFoundError:
                raise FileNotFoundError(2, "no such file in the repository", path) from None
            try:
                st = os.fstat(probe)
                if stat_.S_ISLNK(st.st_mode):
                    raise InvalidArgumentError(
                        f"{path} is a symbolic link to {os.readlink(name, dir_fd=parent)!r}: "
                        "cat reads regular files only ('stat' shows the link)"
                    )
                if not stat_.S_ISREG(st.st_mode):
                    raise InvalidArgumentError(f"{path} is not a regular file")
                # Reopen the checked inode itself (never a name that could have changed).
                fd = os.open(f"/proc/self/fd/{probe}", os.O_RDONLY | os.O_CLOEXEC)
            finally:
                os.close(probe)
        return os.fdopen(fd, "rb")

    def read(self, repo: str, path: str, *, commit: str | None = None) -> bytes:
        with self.open(repo, path, commit=commit) as handle:
            return handle.read()

    @contextlib.contextmanager
    def _beneath(self, repo: str, commit: str | None, path: str) -> Iterator[tuple[int, str, str]]:
        """(descriptor of the directory holding ``path``, its last component or "" for the
        root, the normalized relative path), resolved beneath the repository's root."""
        if ".." in path.split("/"):
            raise InvalidArgumentError(f"{path} leads outside the repository ('..' is not accepted)")
        norm = os.path.normpath("/" + path.lstrip("/")).lstrip("/")
        norm = "" if norm in ("", ".") else norm
        root = self._root(repo, commit)
        # The head's own mount path may lie under directories its owner controls: reach it
        # without links and check it is the dataset's root before reading anything below.
        rootfd = hostfs.open_dir(root) if root not in self._mounts.values() else _open_root(root)
        try:
            source = self._incore(repo) if commit is None else f"{self._incore(repo)}@{commit.split('@', 1)[-1]}"
            try:
                # what was mounted: an old head's snapshot while a promote is due (see _root)
                hostfs.verify_dataset_root(rootfd, self._sources.get(source, source))
            except UnsafePathError as exc:
                raise InvalidArgumentError(f"{root} is not {repo}'s root any more: {exc.message}") from None
            dirname, name = os.path.split(norm)
            try:
                parent = hostfs.open_beneath(rootfd, dirname, os.O_RDONLY | os.O_DIRECTORY, base=repo)
            except UnsafePathError as exc:
                raise InvalidArgumentError(f"{path}: {exc.message} (links are not followed)") from None
            except (FileNotFoundError, NotADirectoryError):
                raise FileNotFoundError(2, "no such file in the repository", path) from None
            try:
                if name:
                    try:
                        os.stat(name, dir_fd=parent, follow_symlinks=False)
                    except FileNotFoundError:
                        raise FileNotFoundError(2, "no such file in the repository", path) from None
                yield parent, name, norm
            finally:
                os.close(parent)
        finally:
            os.close(rootfd)

    def _root(self, repo: str, commit: str | None) -> str:
        """A directory showing ``repo``'s head or commit: its own mount when it is mounted
        (live), else a private read-only mount."""
        incore = self._incore(repo)
        if commit is None:
            source = incore
            mounted = self._zfs.host.mounts().get(incore)
            if mounted and self.mode is Mode.LIVE:
                return mounted[0]
        else:
            short = commit.split("@", 1)[-1]
            if not _names.is_snapshot_short(short):
                raise InvalidArgumentError(f"{commit!r} is not a snapshot name")
            source = f"{incore}@{short}"
        if source not in self._mounts:  # checked and mounted once, then every read reuses it
            # A commit's snapshot that exists answers for its repository too: one lookup
            # (a zfs process, listing by commands), not two.
            real = source if source != incore and self._zfs.exists(source) else ""
            if not real:
                if not self._zfs.exists(incore):
                    raise RepositoryNotFoundError(f"repository {repo} does not exist", dataset=repo)
                # an old head may keep a commit until a promote is done (see core.history)
                real = incore if source == incore else find_snapshot(self._zfs, incore, source.split("@", 1)[1]) or ""
                if not real:
                    raise RepositoryNotFoundError(f"{repo} has no commit {source.split('@', 1)[1]}", dataset=repo)
            if not self._private:
                import tempfile  # here, not at the top: history never mounts (tempfile loads shutil, random, bz2, lzma)

                self._private = tempfile.mkdtemp(prefix=reader_dir_prefix())
            path = os.path.join(self._private, f"m{len(self._mounts)}")
            os.mkdir(path)
            self._zfs.host.mount_readonly(real, path)
            self._mounts[source] = path
            self._sources[source] = real
        return self._mounts[source]

    def freshness(self, kind: str, key: str) -> tuple[str, float]:
        """How fresh this reader's answer to a ``kind`` ("history", "repositories") read
        of ``key`` is: ``("fresh", 0.0)`` read live now, ``("offline", 0.0)`` read now
        from a pool imported read-only, ``("cached", age)`` served from the read cache,
        ``age`` seconds after it was taken."""
        return ("fresh" if self.mode is Mode.LIVE else "offline", 0.0)

    def _record(self, kind: str, key: str, payload: Any) -> None:
        if self.cache is not None:
            self.cache.record(kind, key, payload)

    # ------------------------------------------------------------------ writes
    def repository(self, name: str) -> RepositoryView:
        """The repository ``name`` through this reader: its reads, and (live only) its changes."""
        self._incore(name)
        return RepositoryView(self, name)

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Unmount what this reader mounted; offline, export the pool if we imported it."""
        if self.closed:
            return
        self.closed = True
        try:
            for source, path in reversed(list(self._mounts.items())):
                self._zfs.host.release_mount(self._sources.get(source, source), path)
                os.rmdir(path)
            self._mounts.clear()
            if self._private:
                os.rmdir(self._private)
        finally:
            if self._on_close:
                self._on_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CachedReader(Reader):
    """Serves repository lists and histories recorded earlier by live reads. Every result
    was taken at ``taken_at(kind, key)``; file reads are not cached."""

    cached = True

    def __init__(self, cache: ReadCache, *, pool: str | None = None, reason: str = "") -> None:
        super().__init__(None, mode=Mode.OFFLINE, pool=pool, cache=cache)
        self.reason = reason
        self._taken: dict[tuple[str, str], str] = {}

    def describe(self) -> str:
        return f"offline, cached reads from {self.cache.path if self.cache else '?'} ({self.reason})"

    def taken_at(self, kind: str, key: str) -> str | None:
        return self._taken.get((kind, key))

    def freshness(self, kind: str, key: str) -> tuple[str, float]:
        taken = self._taken.get((kind, key))
        now = self.cache.clock() if self.cache else 0.0
        return ("cached", age_of(taken, now) if taken else 0.0)

    def _get(self, kind: str, key: str) -> Any:
        assert self.cache is not None
        found = self.cache.get(kind, key)
        self._taken[(kind, key)] = found.taken_at
        return found.payload

    def repositories(self, under: str | None = None) -> list[RepositoryInfo]:
        key = under or str(self.pool)
        text = str | None
        fields = {"name": str, "mountpoint": text, "owner": text, "mode": text, "commits": int, "last_commit": text}
        return self._typed("repositories", key, RepositoryInfo, fields)

    def history(self, repo: str) -> list[Commit]:
        fields = {"snapshot": str, "tx": str, "committed": str, "message": str | None, "guid": int, "createtxg": int}
        return self._typed("history", repo, Commit, fields)

    def _typed(self, kind: str, key: str, cls: type[_R], fields: dict[str, Any]) -> list[_R]:
        """The cached read as ``cls`` records, each of the ``fields`` of its type. The cache
        is a file its user can change: what it holds is checked as it is read, so a
        damaged one is an error, not a traceback."""
        items = self._get(kind, key)
        if not isinstance(items, list) or not all(_has_fields(item, fields) for item in items):
            raise self._unreadable(kind, key)
        return [cls(**{name: item[name] for name in fields}) for item in items]

    def _unreadable(self, kind: str, key: str) -> CacheMissError:
        path = self.cache.path if self.cache else "?"
        return CacheMissError(
            f"the read cache {path} holds an unreadable {kind} of {key}", hint="dsg-storage cache clear"
        )

    def _root(self, repo: str, commit: str | None) -> str:
        raise CacheMissError(f"file contents of {repo} are not cached (only repository lists and histories are)")

    def close(self) -> None:
        self.closed = True
        if self.cache:
            self.cache.close()


class RepositoryView:
    """A repository seen through a Reader: reads always; changes only when live."""

    def __init__(self, reader: Reader, name: str) -> None:
        self.reader = reader
        self.name = name

    @property
    def mode(self) -> Mode:
        return self.reader.mode

    def history(self) -> list[Commit]:
        return self.reader.history(self.name)

    def files(self, path: str = "", *, commit: str | None = None) -> list[FileEntry]:
        return self.reader.files(self.name, path, commit=commit)

    def stat(self, path: str, *, commit: str | None = None) -> FileEntry:
        return self.reader.stat(self.name, path, commit=commit)

    def read(self, path: str, *, commit: str | None = None) -> bytes:
        return self.reader.read(self.name, path, commit=commit)

    def _writable(self, what: str) -> Repository:
        if self.reader.read_only:
            raise ReadOnlyError(
                f"cannot {what} {self.name}: its pool is open read-only ({self.reader.describe()})",
                dataset=self.name,
                hint="changes need the pool imported normally",
            )
        from ..core.repository import Repository  # here: reads need none of the transaction code

        return Repository(self.name, zfs=self.reader._zfs)

    def begin(self, **kwargs: Any) -> Transaction:
        return self._writable("begin a transaction on").begin(**kwargs)

    def commit(self, tx: str, message: str | None = None) -> Commit:
        return self._writable("commit to").commit(tx, message)

    def rollback(self, tx: str) -> None:
        self._writable("roll back a transaction of").rollback(tx)

    def abort(self, tx: str) -> None:
        self._writable("abort a transaction of").rollback(tx)

    def recover(self) -> list[str]:
        return self._writable("recover").recover()

    def snapshot(self, name: str) -> None:
        """Take snapshot ``name`` (``REPO@short``)."""
        self._writable("snapshot").snapshot(name)


def open_live(
    *, allow: AllowList | str | None = None, cache: ReadCache | None = None, zfs: ZfsPort | None = None
) -> Reader:
    """A reader of the pools imported on this host (through ``zfs``, default the boundary
    opened with ``allow``); with ``cache``, repository lists and histories it reads are
    recorded for ``open_offline(..., cached=True)``."""
    return Reader(zfs if zfs is not None else open_zfs(allow), mode=Mode.LIVE, cache=cache)
