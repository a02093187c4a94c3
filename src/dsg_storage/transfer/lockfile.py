"""Lock files: a repository's commit snapshots, in order, with their GUIDs.

A lock file lets someone check later, maybe on another machine after a bundle import,
that a repository holds exactly the commits it should: same names, same GUIDs (a GUID
tells a snapshot from another of the same name), same order. It is JSON::

    {
      "format": "dsg-storage-lock",
      "format_version": 1,
      "repository": "tank/data/survey",
      "created": "2026-11-21T10:10:10Z",
      "dsg_storage_version": "0.1.0",
      "commits": [{"name": "dsg-commit-20261121T101010123Z", "guid": "12345678901234567890"}]
    }

GUIDs are u64s, written as decimal strings: many JSON readers turn numbers into doubles
and lose the low bits of a GUID above 2**53. ``dsg_storage_version`` is informative and
may be absent.

After a crash: ``write`` replaces the file atomically (temporary file in the same
directory, fsync, rename, fsync of the directory), so the path holds the old lock or the
new one, whole. A crash before the rename may leave a ``.NAME.*.tmp`` file beside it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeGuard

import attrs

from .. import names as _names
from .._version import __version__
from ..errors import InvalidNameError, LockFileError
from . import safejson

MARKER = "dsg-storage-lock"
FORMAT_VERSION = 1
_GUID = re.compile(r"[0-9]{1,20}")


@attrs.frozen
class LockedCommit:
    name: str  # the snapshot's short name, e.g. "dsg-commit-20261121T101010123Z"
    guid: int


def _commit_tuple(commits: Iterable[LockedCommit]) -> tuple[LockedCommit, ...]:
    return tuple(commits)


@attrs.frozen
class LockFile:
    repository: str
    created: str  # UTC, ISO 8601
    commits: tuple[LockedCommit, ...] = attrs.field(converter=_commit_tuple)
    format_version: int = FORMAT_VERSION
    dsg_storage_version: str | None = None  # of the dsg-storage that wrote it, when known


def make(repository: str, commits: Iterable[LockedCommit], *, now: datetime | None = None) -> LockFile:
    """A lock file of ``commits`` (oldest first), created now, by this dsg-storage."""
    created = (now or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return LockFile(repository, created, tuple(commits), dsg_storage_version=__version__)


def dumps(lock: LockFile) -> str:
    doc: dict[str, Any] = {
        "format": MARKER,
        "format_version": lock.format_version,
        "repository": lock.repository,
        "created": lock.created,
    }
    if lock.dsg_storage_version is not None:
        doc["dsg_storage_version"] = lock.dsg_storage_version
    doc["commits"] = [{"name": commit.name, "guid": str(commit.guid)} for commit in lock.commits]
    return json.dumps(doc, indent=2) + "\n"


def loads(text: str, *, source: str = "lock file") -> LockFile:
    """Parse a lock file; ``source`` names it in error messages."""
    try:
        data = text.encode()
    except UnicodeEncodeError:  # a str made in Python: a file's bytes decode to none such
        raise LockFileError(f"{source} is not a dsg-storage lock file (it holds a lone surrogate)") from None
    try:
        doc = safejson.loads(data, max_size=MAX_SIZE)
    except safejson.JsonLimitError as exc:
        bad = exc.decode_error
        if bad is not None:
            raise LockFileError(
                f"{source} is not valid JSON: {bad.msg} at line {bad.lineno}, column {bad.colno}"
            ) from None
        raise LockFileError(f"{source} cannot be read: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != MARKER:
        raise LockFileError(f'{source} is not a dsg-storage lock file (it lacks "format": "{MARKER}")')
    version = doc.get("format_version")
    if not _is_int(version) or version < 1:
        raise LockFileError(f"{source} has no valid 'format_version' (found {version!r})")
    if version > FORMAT_VERSION:
        raise LockFileError(
            f"{source} is lock file format version {version}, made by a newer dsg-storage; "
            f"this one reads format {FORMAT_VERSION}",
            hint="read it with a newer dsg-storage",
        )
    repository, created = _string(doc, "repository", source), _string(doc, "created", source)
    try:
        _names.validate_repository(repository)
    except InvalidNameError as exc:
        raise LockFileError(f"{source} has an invalid 'repository': {exc}") from None
    try:
        datetime.fromisoformat(created)
    except ValueError:
        raise LockFileError(f"{source} has an invalid 'created' time {created!r} (expected ISO 8601)") from None
    tool = doc.get("dsg_storage_version")
    commits = _commits(doc.get("commits"), source)
    return LockFile(repository, created, commits, version, tool if isinstance(tool, str) else None)


def _commits(entries: object, source: str) -> tuple[LockedCommit, ...]:
    """The ``commits`` list: each a snapshot name and a GUID, no name twice."""
    if not isinstance(entries, list):
        raise LockFileError(f"{source} has no 'commits' list")
    commits, seen = [], set()
    for number, entry in enumerate(entries, 1):
        where = f"{source}: commit {number}"
        if not isinstance(entry, dict):
            raise LockFileError(f"{where} is not an object with 'name' and 'guid'")
        name, guid = _string(entry, "name", where), entry.get("guid")
        if not _names.is_snapshot_short(name) or len(name) > _names.MAX_NAME_LEN:
            raise LockFileError(f"{where} has a 'name' that is no snapshot name: {name[:80]!r}")
        # A string, as written; a plain number too, from a hand-made file (Python's are exact).
        if isinstance(guid, str) and _GUID.fullmatch(guid):
            guid = int(guid)
        if not _is_int(guid) or not 0 <= guid < 2**64:
            raise LockFileError(f"{where} ({name}) has no valid 'guid' (a decimal string, 0 to 2**64-1)")
        if name in seen:
            raise LockFileError(f"{source} lists commit {name} twice")
        seen.add(name)
        commits.append(LockedCommit(name, guid))
    return tuple(commits)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _string(doc: dict[str, Any], key: str, source: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise LockFileError(f"{source} has no {key!r}" if value is None else f"{source} has an invalid {key!r}")
    return value


def write(path: str | os.PathLike[str], lock: LockFile) -> None:
    """Replace ``path`` with ``lock`` atomically and durably (see the module docstring).
    A new file is mode 0644 (a lock file is meant to be shared); a replaced one keeps its mode."""
    target = Path(path)
    data = dumps(lock).encode()
    try:
        mode = stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)  # makes the rename itself durable
    finally:
        os.close(dir_fd)


MAX_SIZE = 16 << 20  # about 150,000 commits


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """A lock file's bytes, read once: a regular file (not a FIFO, a device or a link) of at
    most MAX_SIZE bytes. A missing one raises ``FileNotFoundError``, a bad one ``LockFileError``."""
    name = os.fspath(path)
    # /proc/self/fd/N: a descriptor the CLI opened as the invoking user (under sudo).
    nofollow = 0 if re.fullmatch(r"/proc/self/fd/[0-9]+", name) else os.O_NOFOLLOW
    try:
        fd = os.open(name, os.O_RDONLY | nofollow | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise
    except OSError as exc:
        detail = "it is a symbolic link; give the file itself" if exc.errno == errno.ELOOP else exc.strerror
        raise LockFileError(f"{name} cannot be opened: {detail}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise LockFileError(f"{name} is not a regular file; a lock file is one")
        data = f.read(MAX_SIZE + 1)
    if len(data) > MAX_SIZE:
        raise LockFileError(f"{name} is larger than {MAX_SIZE} bytes, the limit for a lock file")
    return data


def loads_bytes(data: bytes, *, source: str = "lock file") -> LockFile:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise LockFileError(f"{source} is not a dsg-storage lock file (not UTF-8 text)") from None
    return loads(text, source=source)


def read(path: str | os.PathLike[str]) -> LockFile:
    """Read a lock file; a missing one raises ``FileNotFoundError``, a bad one ``LockFileError``."""
    return loads_bytes(read_bytes(path), source=os.fspath(path))


@attrs.frozen
class LockDiff:
    """How a repository's commits differ from a lock file's; names are the key."""

    matches: bool
    missing: tuple[LockedCommit, ...] = ()  # in the lock, not in the repository
    extra: tuple[LockedCommit, ...] = ()  # in the repository, not in the lock
    changed: tuple[tuple[LockedCommit, LockedCommit], ...] = ()  # same name, other GUID: (locked, actual)
    reordered: bool = False  # the commits both hold are in another order

    def describe(self) -> list[str]:
        """One line per difference; none when the repository matches."""
        lines = [f"missing: {c.name} (guid {c.guid})" for c in self.missing]
        lines += [f"extra: {c.name} (guid {c.guid})" for c in self.extra]
        lines += [f"changed: {lock.name}: guid {lock.guid} in the lock, {now.guid} now" for lock, now in self.changed]
        if self.reordered:
            lines.append("reordered: the commits both hold are in another order than in the lock")
        return lines


def compare(lock: LockFile, actual: Sequence[LockedCommit]) -> LockDiff:
    """Compare ``actual`` (the repository's commits, oldest first) with ``lock``."""
    locked = {c.name: c for c in lock.commits}
    present = {c.name: c for c in actual}
    missing = tuple(c for c in lock.commits if c.name not in present)
    extra = tuple(c for c in actual if c.name not in locked)
    changed = tuple((c, present[c.name]) for c in lock.commits if c.name in present and present[c.name].guid != c.guid)
    reordered = [c.name for c in lock.commits if c.name in present] != [c.name for c in actual if c.name in locked]
    matches = not (missing or extra or changed or reordered)
    return LockDiff(matches, missing, extra, changed, reordered)
