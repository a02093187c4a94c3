"""Importing a bundle: the transfer wing's hand-off to the core.

    import_bundle("survey.dsgb", "vault/survey", mountpoint="/srv/survey", allow="vault")
    plan_import("week.dsgb", "vault/survey")          # the plan it would run: a dry run

This module opens the file once, checks it (``check``), and hands the core a checked
stream source (``_BundleSource``, a ``core.receive.StreamSource``); the core plans and
runs the import as a transaction pattern (``core.receive``: *full* lands through
``REPO.dsg-recv-TX`` and a rename, *incremental* through a mark, a rollback to the base
and one sync task), and recovery undoes or finishes it after a crash, as for a commit.
Around that: the audit line (``audit``), the caller's progress. It acts on no ZFS
itself.

A bundle comes from somebody else and is imported as root, so nothing in it is trusted
that was not checked, and nothing of its author's gives privilege:

* **one file, one check**: the file is opened once (a regular file, not a link); a file
  that someone other than root or the importer could write is refused (they could
  change it between the check and the receive), and so is one open for writing
  elsewhere (a read lease cannot be had). Every check and ZFS's receive read that
  same open file.
* **checked against itself** before ZFS reads a byte (``check.check_for_import``: the
  metadata, each part's info, each stream's BEGIN record, every record and chunk
  digest); then every stream byte by ZFS's own stream checksums as it receives; after
  each part, that ZFS read exactly the part's bytes (``_BundlePart.feed``) and, in the
  core, that the snapshot has the GUID the bundle promised. ``check_streams`` also
  checks every stream byte against its chunk digest while ZFS receives
  (``_StreamChecks``); the last part is handed over only once they all passed, so the
  commit point comes after.
* **signed** (``signing``): with an allowed-signers file a signature is checked (and,
  when required, must be there); it covers the sha256 of every byte of the file, so
  then every byte is hashed before ZFS reads one.
* **harmless**: received repositories carry ``setuid=off`` and ``devices=off`` before
  they are ever mounted, and are mounted ``nosuid,nodev``; their owner and mode are the
  importer's (``owner``, ``mode``; default the invoking user and 0755), the bundle's
  are only shown.
* **audited** (``audit``): every import appends a line to the audit log, with the
  sha256 of what was imported under sudo.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import stat
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import attrs

from .. import _log
from ..core.options import Owner
from ..core.receive import Incoming, ReceivePlan, StreamPart
from ..core.repository import Repository
from ..core.status import PoolPropertyPolicy
from ..errors import (
    BundleError,
    DsgStorageError,
)
from . import reader as _bundle_format
from . import signing
from .audit import DEFAULT_PATH as DEFAULT_AUDIT_LOG
from .audit import AuditLog
from .audit import audit_failure as _audit_failure
from .check import CheckedBundle, StreamCheck
from .check import check_for_import as _check_for_import
from .check import file_sha256 as _file_sha256
from .progress import ProgressFn
from .progress import reporting as _reporting
from .reader import CheckedRecords

if TYPE_CHECKING:  # the boundary's types only: the core opens it (``Repository``)
    from ..zfs.allow import AllowList
    from ..zfs.port import ZfsPort

log = _log.getLogger("dsg_storage")


@attrs.frozen
class ImportResult:
    repository: str
    kind: str  # full | incremental
    snapshots: tuple[str, ...]  # received, short names, oldest first
    mountpoint: str | None
    owner: str = ""  # UID:GID given to the repository's root (the importer's choice)
    mode: str = ""
    sha256: str | None = None  # of the whole bundle file, when a signature was checked
    signer: str | None = None  # the principal whose signature was checked, if one was
    steps: tuple[str, ...] = ()  # what ran: the plan's actions, then the placement (``--dry-run`` prints the plan)


@attrs.frozen
class Source:
    """A file the caller named, opened for them by someone else (through sudo: root reads
    it from a descriptor, ``/proc/self/fd/N``, or from a private copy of it): the
    caller's ``name`` for it (in messages and the audit log), its ``signature``
    (a descriptor of ``NAME.sig`` opened as the caller, or None: they have none) and its
    ``identity`` (``device``, ``inode``, ``size`` of the caller's file, for the audit log)."""

    name: str
    signature: int | None = None
    identity: Mapping[str, int] = attrs.Factory(dict)

    def read_signature(self, error: type[DsgStorageError]) -> tuple[bytes | None, Path]:
        shown = signing.signature_path(self.name)
        if self.signature is None:
            return None, shown
        return signing.read_signature(self.signature, error, name=str(shown)), shown


def _offset_in(fd: int, start: int) -> int:
    return os.lseek(fd, 0, os.SEEK_CUR) - start


def _check_private(f: Any, name: str) -> None:
    """Refuse a bundle that someone other than root or the importer could change while it
    is imported: they could swap its bytes between the check and the receive."""
    fd = f.fileno()
    st = os.fstat(fd)
    if st.st_uid not in (0, os.geteuid()):
        raise BundleError(
            f"{name} belongs to uid {st.st_uid}, who could change it while it is imported",
            hint="copy it to a directory of your own first (cp), and import the copy",
        )
    if st.st_mode & 0o022:
        raise BundleError(
            f"{name} is writable by its group or by others (mode {stat.S_IMODE(st.st_mode):04o}), "
            "who could change it while it is imported",
            hint=f"chmod go-w {name}, or import a copy of your own",
        )
    # A read lease is granted only when nobody has the file open for writing: a writer
    # that opened it before its mode was tightened is caught here.
    try:
        fcntl.fcntl(fd, _F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EBUSY):
            raise BundleError(f"{name} is open for writing by another process; import it once that is done") from None
        log.debug("no read lease on %s (%s): the owner and mode checks stand alone", name, exc.strerror)
        return
    fcntl.fcntl(fd, _F_SETLEASE, fcntl.F_UNLCK)


_F_SETLEASE = getattr(fcntl, "F_SETLEASE", 1024)


def default_owner() -> Owner:
    """The invoking user: the one behind sudo when root runs through sudo."""
    from ..settings import current_invoker  # the one reading of SUDO_UID/SUDO_GID (ASCII digits)

    invoker = current_invoker() if os.geteuid() == 0 else None
    return invoker or Owner(os.getuid(), os.getgid())


def import_bundle(  # noqa: PLR0913  the public API: every option a keyword
    path: str | os.PathLike[str],
    into: str,
    *,
    mountpoint: str | None = None,
    allow: AllowList | str | None = None,
    zfs: ZfsPort | None = None,
    progress: ProgressFn | None = None,
    lock_timeout: float = 10.0,
    owner: str | Owner | None = None,
    mode: str | int | None = None,
    allowed_signers: str | os.PathLike[str] | None = None,
    require_signature: bool = False,
    audit_log: str | os.PathLike[str] = DEFAULT_AUDIT_LOG,
    check_streams: bool = False,
    policy: PoolPropertyPolicy | None = None,
    source: Source | None = None,
) -> ImportResult:
    """Receive a bundle into repository ``into``: a full bundle creates it (refused if it
    exists; ``mountpoint`` as for an init, required unless inherited), an incremental one
    applies onto the base it was made from.

    A bad bundle changes nothing. Its claims, records and signature are checked as
    ``check_bundle`` does, before anything changes; its stream bytes by ZFS's own stream
    checksums as ZFS receives them (with a checked signature, every byte of the file
    first; with ``check_streams``, also against the bundle's chunk digests meanwhile, as
    ``verify_bundle`` does), and damage undoes what arrived before the commit point,
    raising the ``BundleCorruptError`` that names the damaged chunk. The repository's
    root gets ``owner`` and ``mode`` (default: the invoking user, 0755; for an
    incremental bundle, the repository's own unless given); the bundle's are never
    applied. Received repositories carry ``setuid=off`` and ``devices=off``. Lands
    completely or not at all, also across a crash (see the module's docstring;
    ``recover`` finishes the cleanup after a crash). Appends the import and its result
    (with how its streams were checked) to the audit log. ``policy`` (the sudo policy,
    as ``Repository`` takes it): what is read from the pool that steers root (the
    repository's recorded mountpoint, owner and mode; an inherited mountpoint) is
    checked against it before anything acts on it. ``source`` (through sudo: how the
    caller named the file root imports from a descriptor or a private copy): its name,
    its ``.sig`` and its identity go to the messages and the audit log, with the sha256
    of what was imported, computed whether or not a signature asked for it.
    """
    audit = AuditLog(os.fspath(audit_log))
    audit.check()
    record: dict[str, Any] = {"action": "import", "file": os.path.abspath(path), "into": into}
    if source is not None:
        record.update(file=source.name, source={**source.identity})
    trust = _Trust(allowed_signers, require_signature, check_streams, source)
    try:
        repository = Repository(into, allow=allow, zfs=zfs, lock_timeout=lock_timeout, policy=policy)
        repository.zfs.allow.check(repository.name)
        with _opened(path, trust, _Passes(progress) if progress is not None else None) as bundle:
            record.update(bundle.audited())
            done = repository.receive(bundle, mountpoint=mountpoint, owner=_owner(bundle, owner), mode=mode)
    except BaseException as exc:
        _audit_failure(audit, record, exc)
        raise
    audit.append({**record, "result": "ok", "snapshots": [s.name for s in bundle.snapshots]})
    return bundle.result(done.plan, done.steps)


@attrs.frozen
class _Trust:
    """How far a bundle is trusted, and how its bytes are checked (``import_bundle``)."""

    allowed_signers: str | os.PathLike[str] | None
    require_signature: bool
    check_streams: bool
    source: Source | None


@contextlib.contextmanager
def _opened(
    path: str | os.PathLike[str], trust: _Trust, passes: _Passes | None, *, receiving: bool = True
) -> Iterator[_BundleSource]:
    """The bundle opened once and checked as an import needs it before anything changes
    (``_check_for_import``; when ``receiving``, also that nobody else can change it
    meanwhile, ``_check_private``): the source the core receives from."""
    source = trust.source
    name = source.name if source is not None else os.fspath(path)
    with _bundle_format.open_checked(path) as f:
        if receiving:
            _check_private(f, name)
        checked, stream_check = _check_for_import(
            f,
            os.fspath(path),
            passes,
            allowed_signers=trust.allowed_signers,
            require_signature=trust.require_signature,
            check_streams=trust.check_streams,
            source=source,
        )
        if source is not None and checked.sha256 is None:  # the audit names what root imported
            checked = attrs.evolve(checked, sha256=_file_sha256(f.fileno()))
        yield _BundleSource(f, name, checked, stream_check, passes)


def _owner(bundle: _BundleSource, owner: str | Owner | None) -> str | Owner | None:
    """The owner given, else for a new repository the invoking user (an incremental
    import keeps the repository's own)."""
    return owner if owner is not None or bundle.base is not None else default_owner()


def plan_import(  # noqa: PLR0913  the public API, as import_bundle's: every option a keyword
    path: str | os.PathLike[str],
    into: str,
    *,
    mountpoint: str | None = None,
    allow: AllowList | str | None = None,
    zfs: ZfsPort | None = None,
    owner: str | Owner | None = None,
    mode: str | int | None = None,
    allowed_signers: str | os.PathLike[str] | None = None,
    require_signature: bool = False,
    check_streams: bool = False,
    policy: PoolPropertyPolicy | None = None,
    source: Source | None = None,
) -> list[str]:
    """What ``import_bundle`` would do now, one line per step (recovery's first), from
    the plan it would run: the bundle checked as the import checks it, nothing changed."""
    repository = Repository(into, allow=allow, zfs=zfs, policy=policy)
    trust = _Trust(allowed_signers, require_signature, check_streams, source)
    with _opened(path, trust, None, receiving=False) as bundle:
        return repository.plan_receive(bundle, mountpoint=mountpoint, owner=_owner(bundle, owner), mode=mode)


class _Passes:
    """An import's progress: stream bytes checked plus stream bytes received, of twice the
    stream bytes (of the stream bytes alone once ``single``: no pass of our own). The two
    passes may run at once, on different threads: each reports its own count, and the
    sum goes out under a lock, so it never goes backwards."""

    def __init__(self, progress: ProgressFn) -> None:
        self._progress = progress
        self._lock = threading.Lock()
        self._checked = self._received = 0
        self._passes = 2

    def single(self) -> None:
        self._passes = 1

    def checked(self, done: int, total: int | None) -> None:
        with self._lock:
            self._checked = done
            self._emit(total)

    def received(self, done: int, total: int | None) -> None:
        with self._lock:
            self._received = done
            self._emit(total)

    def _emit(self, total: int | None) -> None:
        self._progress(self._checked + self._received, self._passes * total if total else None)


class _StreamChecks:
    """The check of every part's stream against its chunk digests, on a thread of its own,
    part by part in order, while ZFS receives the parts from the same open file: the
    check reads through pread and mmap (the offset ZFS reads from is left alone), and
    whichever of the two reads a page second finds it in the page cache. Memory stays as
    ``verify``'s: two mapped windows. Nothing waits on a timer: each part's check is a
    future, waited for when its result matters (``through``)."""

    def __init__(self, records: CheckedRecords | None, progress: ProgressFn | None) -> None:
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="dsg-bundle-verify")
        self._parts: list[Future[int]] = []
        if records is None:  # every stream was checked already
            return
        before = 0
        for index, part in enumerate(records.info.parts):
            self._parts.append(
                self._pool.submit(records.check_stream, index, progress=progress, done=before, stop=self._stop)
            )
            before += part.size

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()  # on the way out after a failure: the rest is not needed
        self._pool.shutdown(wait=True, cancel_futures=True)

    def failed_yet(self) -> None:
        """Raise the error of the first part found bad so far, if any (waits for nothing)."""
        for part in self._parts:
            if not part.done():
                return
            part.result()

    def through(self, index: int) -> None:
        """Wait until parts 0 to ``index`` are checked; raise the first one's error."""
        for part in self._parts[: index + 1]:
            part.result()


class _BundleSource:
    """A checked bundle as the core receives it (``core.receive.StreamSource``): its
    snapshots, and its parts read straight from the open file, ZFS checking each stream
    as it receives (and, as ``stream_check`` says, our own check beside it)."""

    def __init__(
        self, f: Any, name: str, checked: CheckedBundle, stream_check: StreamCheck, passes: _Passes | None
    ) -> None:
        meta = checked.metadata
        self.name, self.checked, self.stream_check = name, checked, stream_check
        self._f, self._passes = f, passes
        self.base = Incoming(meta.base.name, meta.base.guid) if meta.base is not None else None
        self.snapshots = tuple(Incoming(s.name, s.guid, dict(s.user_props)) for s in meta.snapshots)

    def audited(self) -> dict[str, Any]:
        """What the audit line records of the bundle, and how its stream bytes were checked."""
        checked = self.checked
        return {
            "sha256": checked.sha256,
            "structure_sha256": checked.info.structure_sha256,
            "size": checked.info.file_size,
            "signer": checked.signature.signer,
            "signature": checked.signature.status,
            "source_repository": checked.metadata.repository,
            "stream_check": self.stream_check.value,
        }

    def result(self, plan: ReceivePlan, steps: tuple[str, ...]) -> ImportResult:
        return ImportResult(
            plan.repository,
            plan.kind,
            tuple(s.name for s in self.snapshots),
            plan.mountpoint,
            plan.owner,
            plan.mode,
            sha256=self.checked.sha256,
            signer=self.checked.signature.signer,
            steps=steps,
        )

    def parts(self) -> Iterator[StreamPart]:
        """Each part in order; with ``StreamCheck.WHILE``, the streams' bytes checked
        against their chunk digests meanwhile (``_StreamChecks``), and the last part
        given only once every one of them was found good: the commit point comes after."""
        info = self.checked.info
        records = _bundle_format.check_records(self._f, expect=info)  # raises if the file changed since
        overlap = records if self.stream_check is StreamCheck.WHILE else None
        done = 0
        with _StreamChecks(overlap, self._passes.checked if self._passes else None) as checks:
            for summary, snapshot in zip(records.info.parts, self.snapshots, strict=True):
                checks.failed_yet()  # a part found bad: receive no more
                yield _BundlePart(snapshot, f"part {summary.index + 1}", self, summary, records, checks, done)
                done += summary.size
                if self._passes:
                    self._passes.received(done, info.total_size)
            checks.through(len(records.info.parts) - 1)  # every byte found good before the commit point


@attrs.frozen
class _BundlePart:
    """One part of a ``_BundleSource`` (``core.receive.StreamPart``)."""

    snapshot: Incoming
    label: str
    bundle: _BundleSource
    summary: _bundle_format.PartSummary
    records: CheckedRecords
    checks: _StreamChecks
    before: int  # stream bytes of the parts before it

    @contextlib.contextmanager
    def feed(self) -> Iterator[int]:
        fd, part = self.bundle._f.fileno(), self.summary
        os.lseek(fd, part.offset, os.SEEK_SET)
        passes = self.bundle._passes
        position = functools.partial(_offset_in, fd, part.offset)
        with _reporting(
            passes.received if passes else None, position, self.before, self.bundle.checked.info.total_size
        ):
            yield fd
        end = os.lseek(fd, 0, os.SEEK_CUR)
        if end != part.offset + part.size:  # ZFS's stream ended elsewhere than the bundle says
            raise self.refused(f"{self.label} is {end - part.offset} bytes as ZFS read it")

    def refused(self, message: str) -> BundleError:
        """The damage the part's chunk digests find, if any (raised), else ``message``."""
        if self.bundle.stream_check is StreamCheck.WHILE:
            self.checks.through(self.summary.index)
        elif self.bundle.stream_check is StreamCheck.ZFS:  # only now, after a failure: it names the damage
            self.records.check_stream(self.summary.index)
        return BundleError(f"{self.bundle._f.name}: {message}")


__all__ = [
    "ImportResult",
    "default_owner",
    "import_bundle",
    "plan_import",
]
