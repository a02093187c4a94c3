"""Lock files against the pool: one written from a repository's commits (signed when
asked), one read with its signature checked on the very bytes then parsed, and a
repository compared with one. The file format itself is ``lockfile``'s, which stays a
parser that reads no pool; the pool is read through the core (``core.send``).
"""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING

from .. import names as _names
from ..core import send
from ..core.repository import Repository
from ..errors import InvalidArgumentError, LockFileError
from . import lockfile as _lockfile
from . import signing
from .lockfile import LockDiff, LockedCommit, LockFile
from .signing import Signature, SignatureSource

if TYPE_CHECKING:  # the port's types only: the core opens the boundary (``core.send``)
    from ..zfs.port import ZfsPort


def _locked_commits(zfs: ZfsPort, repo: str) -> list[LockedCommit]:
    return [LockedCommit(c.name, c.guid) for c in Repository(repo, zfs=zfs).history()]


def write_lock(
    repo: str,
    path: str | os.PathLike[str] | None = None,
    *,
    zfs: ZfsPort | None = None,
    sign: str | os.PathLike[str] | None = None,
) -> LockFile:
    """A lock file of ``repo``'s commits (names and GUIDs, in order), written atomically to
    ``path`` when given (after a crash: the old file or the new one, whole); with
    ``sign`` (an OpenSSH private key file), signed in ``path.sig``, written first."""
    zfs = send.reading(zfs)
    lock = _lockfile.make(_names.validate_repository(repo), _locked_commits(zfs, repo))
    if sign is not None and path is None:
        raise InvalidArgumentError("a signed lock file needs a file to go to (-o FILE)")
    if path is not None:
        data = _lockfile.dumps(lock).encode()
        signature_file = signing.signature_path(path)
        if sign is not None:
            manifest = signing.manifest("lock", hashlib.sha256(data).hexdigest(), len(data))
            signing.write_signature(signature_file, signing.sign(sign, manifest))
        else:
            signature_file.unlink(missing_ok=True)  # a stale one would not match this lock file
        _lockfile.write(path, lock)
    return lock


def read_lock_checked(
    path: str | os.PathLike[str],
    *,
    allowed_signers: str | os.PathLike[str] | None = None,
    require_signature: bool = False,
    source: SignatureSource | None = None,
) -> tuple[LockFile, Signature]:
    """Read a lock file once, check its signature (``PATH.sig``, or ``source``'s) against
    ``allowed_signers`` when given (refused if absent when ``require_signature``) on the
    very bytes then parsed."""
    data = _lockfile.read_bytes(path)
    name = source.name if source is not None else os.fspath(path)
    signed, signature_file = signing.signature_of(path, source, LockFileError)
    signature = signing.check(
        lambda: signing.manifest("lock", hashlib.sha256(data).hexdigest(), len(data)),
        signed,
        signature_file,
        allowed_signers,
        require=require_signature,
        error=LockFileError,
        what=name,
    )
    return _lockfile.loads_bytes(data, source=name), signature


def check_lock(
    path: str | os.PathLike[str],
    repo: str,
    *,
    zfs: ZfsPort | None = None,
    allowed_signers: str | os.PathLike[str] | None = None,
    require_signature: bool = False,
) -> LockDiff:
    """How ``repo``'s commits differ from the lock file at ``path`` (``.matches``)."""
    zfs = send.reading(zfs)
    lock, _ = read_lock_checked(path, allowed_signers=allowed_signers, require_signature=require_signature)
    return _lockfile.compare(lock, _locked_commits(zfs, _names.validate_repository(repo)))
