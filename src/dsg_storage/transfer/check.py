"""The trust check of a bundle: what must hold of a file somebody else made before it is
shown (``inspect_bundle``), called whole (``verify_bundle``, ``check_bundle``) or
imported (``check_for_import``).

Its claims first, cheap whatever its size: the ends (``reader.inspect``), the metadata
against its schema and each part's info against the metadata (``metadata``), each
stream's BEGIN record against both (``sendstream``), and a signature where one is
required. Then every record and, as the caller asks, every stream byte against its
chunk digest and the sha256 of the whole file, which a checked signature (``signing``)
covers. Memory stays bounded whatever the file holds. Nothing is written: a check cut
short by a crash leaves nothing behind.
"""

from __future__ import annotations

import enum
import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import attrs

from ..errors import BundleError, InvalidArgumentError
from . import metadata as _metadata
from . import reader as _reader
from . import sendstream, signing
from .layout import BundleInfo
from .metadata import BundleMetadata
from .progress import ProgressFn
from .signing import Signature, SignatureSource

_DIGEST_PIECE = 1 << 20


class Passes(Protocol):
    """An import's progress, as the check reports to it (``bundle._Passes``)."""

    def checked(self, done: int, total: int | None) -> None: ...

    def single(self) -> None: ...


@attrs.frozen
class CheckedBundle:
    """A bundle checked whole: its parts, its typed metadata, the sha256 of the file (when
    computed) and how it was signed."""

    info: BundleInfo
    metadata: BundleMetadata
    sha256: str | None
    signature: Signature


def inspect_bundle(path: str | os.PathLike[str]) -> BundleInfo:
    """What a bundle holds (metadata, parts, sizes), reading only its ends; no pool needed.
    The metadata and the parts' info are checked against the schema; the streams are not
    read (``verify_bundle`` does)."""
    with _reader.open_checked(path) as f:
        info = _reader.inspect(f)
        _check_claims(info, os.fspath(path))
        return info


def verify_bundle(
    path: str | os.PathLike[str],
    *,
    progress: ProgressFn | None = None,
    allowed_signers: str | os.PathLike[str] | None = None,
    require_signature: bool = False,
) -> BundleInfo:
    """Check a bundle whole (``check_bundle``); raises a BundleError."""
    return check_bundle(
        path, progress=progress, allowed_signers=allowed_signers, require_signature=require_signature
    ).info


def check_bundle(
    path: str | os.PathLike[str],
    *,
    progress: ProgressFn | None = None,
    allowed_signers: str | os.PathLike[str] | None = None,
    require_signature: bool = False,
    digest: bool = False,
    source: SignatureSource | None = None,
) -> CheckedBundle:
    """Check a bundle whole: the metadata against its schema, the parts' info against
    the metadata, each stream's BEGIN record against both (the chain of snapshots and
    GUIDs), every byte against its digest, and its signature (``PATH.sig``) against
    ``allowed_signers`` if given (refused if absent when ``require_signature``). Memory
    stays bounded whatever the file holds. Computes the file's sha256 when a signature
    is checked or ``digest`` is asked. ``source``: how the caller named the file, when
    it was opened for them (its ``.sig`` then comes from there)."""
    with _reader.open_checked(path) as f:
        claims = _check_claims_first(f, os.fspath(path), allowed_signers, require_signature, source)
        return _check_whole(f, claims, progress, digest)


def _check_claims(info: BundleInfo, name: str) -> BundleMetadata:
    meta = _metadata.parse(info.metadata, name)
    _metadata.check_parts(meta, [p.info for p in info.parts], name)
    return meta


@attrs.frozen
class _Claims:
    """What is checked of a bundle before its long pass: its ends, its typed metadata, the
    parts against it, each stream's BEGIN record against the chain, and the presence of a
    signature (``signed``, the raw signature file, or None) where one is required."""

    info: BundleInfo
    metadata: BundleMetadata
    signed: bytes | None
    signature_file: Any
    allowed_signers: str | os.PathLike[str] | None
    require_signature: bool
    name: str

    @property
    def signature_checked(self) -> bool:
        """Whether the signature is checked: its message, the file's sha256, then needs every byte."""
        return self.allowed_signers is not None and self.signed is not None

    def signature(self, fd: int, sha256: str | None) -> Signature:
        return signing.check(
            lambda: signing.manifest("bundle", sha256 or file_sha256(fd), self.info.file_size),
            self.signed,
            self.signature_file,
            self.allowed_signers,
            require=self.require_signature,
            error=BundleError,
            what=self.name,
        )


def _check_claims_first(
    f: Any,
    path: str,
    allowed_signers: str | os.PathLike[str] | None,
    require_signature: bool,
    source: SignatureSource | None = None,
) -> _Claims:
    if require_signature and allowed_signers is None:
        raise InvalidArgumentError("requiring a signature needs an allowed-signers file (--allowed-signers)")
    name = source.name if source is not None else path
    info = _reader.inspect(f)  # the ends: cheap, refuses lies before the long pass
    meta = _check_claims(info, name)
    fd = f.fileno()
    begins = [sendstream.parse_begin(_pread(fd, p.offset, p.size), f"{name}: part {p.index + 1}") for p in info.parts]
    sendstream.check_chain(meta, begins, name)
    signed, signature_file = signing.signature_of(path, source, BundleError)  # read once, before the long pass
    claims = _Claims(info, meta, signed, signature_file, allowed_signers, require_signature, name)
    if signed is None:
        claims.signature(fd, None)  # unsigned, and a signature is required: refused before the long pass
    return claims


def _check_whole(f: Any, claims: _Claims, progress: ProgressFn | None, digest: bool) -> CheckedBundle:
    """Every byte checked (and the file's sha256, beside it on a thread, when the
    signature is checked or ``digest`` asked), then the signature."""
    fd = f.fileno()
    want_digest = digest or claims.signature_checked
    sha256 = None
    stop = threading.Event()
    with ThreadPoolExecutor(1, thread_name_prefix="dsg-bundle-sha256") as pool:
        hashing = pool.submit(file_sha256, fd, stop) if want_digest else None
        try:
            _reader.verify(f, progress=progress, expect=claims.info)
        except BaseException:
            stop.set()  # the digest is not needed any more: do not wait for it to finish
            raise
        sha256 = hashing.result() if hashing is not None else None
    return CheckedBundle(claims.info, claims.metadata, sha256, claims.signature(fd, sha256))


class StreamCheck(enum.Enum):
    """How an import checks the streams' bytes (``check_for_import`` decides)."""

    BEFORE = "before"  # every byte before ZFS reads one (a checked signature needs the file's sha256)
    WHILE = "while"  # against the chunk digests, on a thread while ZFS receives (``check_streams``)
    ZFS = "zfs"  # by ZFS's own stream checksums as it receives; the chunk digests only to name damage


def check_for_import(
    f: Any,
    path: str,
    passes: Passes | None,
    *,
    allowed_signers: str | os.PathLike[str] | None,
    require_signature: bool,
    check_streams: bool,
    source: SignatureSource | None = None,
) -> tuple[CheckedBundle, StreamCheck]:
    """What must hold before ZFS reads a byte of the bundle, and how the streams' bytes
    are still to be checked while they are received.

    Always first: the claims (``_check_claims_first``) and every record, the chunk
    digests included (``check_records``: cheap), so structural damage and a truncation
    are refused before any change. A signature that is checked covers the sha256 of
    every byte of the file, and the signed manifest names nothing smaller, so it needs
    a full pass first: an unsigned or wrongly signed bundle never reaches ZFS. That pass
    is the sha256 alone: once the bytes are the signer's, the md5 chunk digests (which
    the signer's export computed from them) could only repeat what ZFS checks anyway.

    Otherwise the stream bytes are left to ZFS's own check (``StreamCheck.ZFS``): every
    record of a send stream carries a fletcher4 of the stream before it and the END
    record one of the whole stream, the record checksums included, which ``zfs receive``
    compares before it commits the stream (docs/archive/0006-bundles.md has the source
    and the tests). That catches all the accidental damage the chunk digests are for;
    neither can catch a deliberate rewrite of an unsigned bundle (its author recomputes
    any digest stored in it), which only a signature refutes. With ``check_streams``
    every stream byte is also checked against its chunk digest while ZFS receives, as
    ``verify_bundle`` checks it."""
    claims = _check_claims_first(f, path, allowed_signers, require_signature, source)
    fd = f.fileno()
    if claims.signature_checked:
        _reader.check_records(f, expect=claims.info)
        streams = claims.info.total_size  # progress in stream bytes, as the receive's
        hashed = (lambda done, _: passes.checked(min(done, streams), streams)) if passes else None
        sha256 = file_sha256(fd, progress=hashed)
        return CheckedBundle(claims.info, claims.metadata, sha256, claims.signature(fd, sha256)), StreamCheck.BEFORE
    _reader.check_records(f, expect=claims.info)  # structural damage: refused before any change
    mode = StreamCheck.WHILE if check_streams else StreamCheck.ZFS
    if passes is not None and mode is StreamCheck.ZFS:
        passes.single()
    return CheckedBundle(claims.info, claims.metadata, None, claims.signature(fd, None)), mode


def _pread(fd: int, offset: int, size: int) -> bytes:
    return os.pread(fd, min(size, sendstream.RECORD_SIZE), offset)


def file_sha256(fd: int, stop: threading.Event | None = None, *, progress: ProgressFn | None = None) -> str:
    """The sha256 of the whole file behind ``fd``, read with pread (the offset is left
    alone); ``stop`` ends it early (the result is then meaningless). ``progress`` gets
    the bytes hashed so far."""
    digest = hashlib.sha256()
    buffer = bytearray(_DIGEST_PIECE)
    offset = 0
    with memoryview(buffer) as view:
        while stop is None or not stop.is_set():
            got = os.preadv(fd, [view], offset)
            if not got:
                break
            digest.update(view[:got])  # releases the GIL: runs beside the digest pass
            offset += got
            if progress is not None:
                progress(offset, None)
    return digest.hexdigest()
