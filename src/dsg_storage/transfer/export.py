"""Bundle export: a repository's snapshots written to one bundle file, for a machine that
shares no network with this one.

    export_bundle("tank/data/survey", "survey.dsgb")                          # full history
    export_bundle("tank/data/survey", "week.dsgb", since="dsg-commit-...")    # incremental

ZFS writes each send stream straight into the file (``writer``); nothing in the pool
changes, and the pool is read only through the core's hand-off (``core.send``). The
file appears under its name only once whole, its signature just before it; after a crash
at most a ``.partial`` file is left beside it. Every export appends a line to the audit
log (``audit``).
"""

from __future__ import annotations

import ctypes
import functools
import os
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import attrs

from .. import _log
from .. import names as _names
from .._libc import libc
from .._version import __version__
from ..core import send
from ..errors import InvalidArgumentError, RepositoryNotFoundError
from ..hostfs import OutputFile
from ..names import P_MODE, P_OWNER
from . import metadata as _metadata
from . import signing
from .audit import DEFAULT_PATH as DEFAULT_AUDIT_LOG
from .audit import AuditLog, audit_failure
from .check import file_sha256
from .layout import BundleInfo
from .metadata import BundleMetadata
from .progress import ProgressFn, reporting
from .writer import BundleWriter

if TYPE_CHECKING:  # the port's types only: the core opens the boundary (``core.send``)
    from ..zfs.port import Snapshot, ZfsPort

log = _log.getLogger("dsg_storage")


@attrs.frozen
class ExportedBundle(BundleInfo):
    """What ``export_bundle`` wrote: the bundle, and when signed the sha256 of the file and
    its signature file (else None)."""

    sha256: str | None = None
    signature_file: str | None = None


def _pick(chain: list[Snapshot], short: str, what: str, repo: str) -> int:
    short = short.split("@", 1)[-1]
    for index, snap in enumerate(chain):
        if snap.short_name == short:
            return index
    raise InvalidArgumentError(f"{repo} has no snapshot {short} (for {what})", dataset=repo)


def export_bundle(  # noqa: PLR0913  the public API: every option a keyword
    repo: str,
    output: str | os.PathLike[str] | OutputFile,
    *,
    snapshot: str | None = None,
    since: str | None = None,
    progress: ProgressFn | None = None,
    zfs: ZfsPort | None = None,
    sign: str | os.PathLike[str] | None = None,
    audit_log: str | os.PathLike[str] = DEFAULT_AUDIT_LOG,
) -> ExportedBundle:
    """Write ``repo``'s snapshots up to ``snapshot`` (default: the latest) to ``output``:
    all of them (full bundle), or those after ``since`` (incremental bundle). With
    ``sign`` (an OpenSSH private key file), write the signature to ``output.sig``.

    Streams: memory stays flat whatever the size. The file appears under its name only
    once complete (written to a temporary name beside it, fsynced, renamed), its
    signature just before it; after a crash at most a ``.partial`` file is left beside
    it. Nothing in the pool changes. Appends the export to the audit log. ``output``
    may be a ``hostfs.OutputFile`` (the CLI's, under sudo: written as the invoking user,
    never replacing a file unless asked).
    """
    audit = AuditLog(os.fspath(audit_log))
    audit.check()
    out = output if isinstance(output, OutputFile) else OutputFile(output)
    record: dict[str, Any] = {"action": "export", "file": out.path, "source_repository": repo}
    try:
        exported = _export(repo, out, send.reading(zfs), snapshot=snapshot, since=since, progress=progress, sign=sign)
    except BaseException as exc:
        audit_failure(audit, record, exc)
        raise
    audit.append(
        {
            **record,
            "result": "ok",
            "sha256": exported.sha256,
            "structure_sha256": exported.structure_sha256,
            "size": exported.file_size,
            "signer": os.fspath(sign) if sign else None,
            "snapshots": [s.name for s in _metadata.parse(exported.metadata, out.path).snapshots],
        }
    )
    return exported


def _export(
    repo: str,
    out: OutputFile,
    zfs: ZfsPort,
    *,
    snapshot: str | None,
    since: str | None,
    progress: ProgressFn | None,
    sign: str | os.PathLike[str] | None,
) -> ExportedBundle:
    repo = _names.validate_repository(repo)
    props = send.owner_and_mode(zfs, repo)
    if props is None:
        raise RepositoryNotFoundError(f"repository {repo} does not exist", dataset=repo)
    chain = send.transferable_chain(zfs, repo)
    if not chain:
        raise InvalidArgumentError(f"{repo} has no snapshot to export", dataset=repo)
    last = _pick(chain, snapshot, "--snapshot", repo) if snapshot else len(chain) - 1
    first = _pick(chain, since, "--since", repo) + 1 if since else 0
    if first > last:
        raise InvalidArgumentError(f"--since {since} is not older than {chain[last].short_name}", dataset=repo)
    base = chain[first - 1] if since else None
    carried = chain[first : last + 1]
    meta = BundleMetadata(
        type="incremental" if base else "full",
        repository=repo,
        base=_metadata.BaseRecord(base.short_name, base.guid) if base else None,
        snapshots=tuple(
            _metadata.SnapshotRecord(s.short_name, s.guid, s.createtxg, s.creation, dict(s.user_props)) for s in carried
        ),
        owner=props.get(P_OWNER),
        mode=props.get(P_MODE),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        zfs_version=send.zfs_version(),
        dsg_storage_version=__version__,
    )
    steps = list(zip([base, *carried[:-1]], carried, strict=True))  # (from, to); from None: a full stream
    estimate = 0
    if progress is not None:
        estimate = sum(zfs.send_space(snap.name, prev.name if prev else None) for prev, snap in steps)
    done = 0

    def send_part(snapshot: str, source: str | None, fd: int) -> None:
        start = os.lseek(fd, 0, os.SEEK_CUR)
        with reporting(progress, lambda: os.fstat(fd).st_size - start, done, estimate):
            zfs.send_to(fd, snapshot, source)
        _start_writeback(fd)

    # The partial file is created O_EXCL|O_NOFOLLOW under a random name beside the
    # target (hostfs.OutputFile): a planted link or a guessed name redirects nothing.
    signature_file = signing.signature_path(out.path)
    try:
        with open(out.open(), "w+b", closefd=False) as handle:
            with BundleWriter(handle, meta.to_json()) as writer:
                for (previous, snap), info in zip(steps, meta.parts(), strict=True):
                    source = previous.name if previous else None
                    done += writer.add_part(info.to_json(), functools.partial(send_part, snap.name, source)).size
                written = writer.close()
            handle.flush()
            # A whole extra pass (sha256 runs at 61 MiB/s a core without SHA-NI): only to sign.
            digest = file_sha256(handle.fileno()) if sign is not None else None
        if sign is not None and digest is not None:  # the signature first: never an unsigned bundle by mistake
            signing.write_signature(
                signature_file, signing.sign(sign, signing.manifest("bundle", digest, written.file_size))
            )
        else:  # a stale one would not match this bundle; removed through the checked directory
            out.remove_beside(signing.SIGNATURE_SUFFIX)
        out.publish()  # fsync, rename onto the target, fsync the directory
    except BaseException:
        out.discard()
        raise
    if progress is not None:
        progress(done, done)
    return ExportedBundle(
        written.format_version,
        written.metadata,
        written.parts,
        written.total_size,
        written.file_size,
        written.structure_sha256,
        sha256=digest,
        signature_file=str(signature_file) if sign is not None else None,
    )


def _start_writeback(fd: int) -> None:
    """Start writing the file's dirty pages to disk now (sync_file_range(2), asynchronous),
    so the final fsync overlaps the digest pass instead of following it."""
    sync_file_range = libc().sync_file_range
    sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    if sync_file_range(fd, 0, 0, 2) != 0:  # SYNC_FILE_RANGE_WRITE; a failure only costs speed
        log.debug("sync_file_range: %s", os.strerror(ctypes.get_errno()))
