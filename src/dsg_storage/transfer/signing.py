"""Who made a bundle or a lock file: OpenSSH signatures (``ssh-keygen -Y``).

The format git uses for signed commits, so the keys people already have sign, and the
trust list is OpenSSH's allowed-signers file (``ssh-keygen(1)``, ALLOWED SIGNERS)::

    alice@field-office namespaces="dsg-storage" ssh-ed25519 AAAAC3Nza...

What is signed is a short manifest naming the file's kind, the sha256 of *every byte of
the file* and its size; the signature is detached, in ``FILE.sig`` beside it (the name
``ssh-keygen -Y sign`` itself uses). Detached rather than embedded because it leaves
both formats as they are (an old reader still reads a signed bundle), lets one signature
scheme serve bundles and lock files, and lets anyone check with OpenSSH alone::

    printf 'dsg-storage signed file v1\\nkind bundle\\nsha256 %s\\nsize %s\\n' \\
        "$(sha256sum < b.dsgb | cut -d' ' -f1)" "$(stat -c %s b.dsgb)" |
      ssh-keygen -Y verify -f allowed_signers -I alice@field-office -n dsg-storage -s b.dsgb.sig

The namespace ``dsg-storage`` keeps these signatures from being valid for anything else
(a git commit, a file signed for another tool), and the manifest's ``kind`` keeps a lock
file's signature from passing for a bundle's.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import attrs

from ..errors import DsgStorageError, InvalidArgumentError

NAMESPACE = "dsg-storage"
MAX_SIGNATURE_SIZE = 64 << 10
_TIMEOUT = 60.0


@attrs.frozen
class Signature:
    """How a file was signed. ``status``: ``good`` (checked; ``signer`` is the principal
    from the allowed-signers file, ``key`` the key's fingerprint), ``unsigned`` (no
    ``.sig``), ``unchecked`` (signed, but no allowed-signers file was given)."""

    status: str
    signer: str | None = None
    key: str | None = None


def manifest(kind: str, sha256: str, size: int) -> bytes:
    """The message signed for a file of ``kind`` (bundle, lock) with that digest and size."""
    return f"dsg-storage signed file v1\nkind {kind}\nsha256 {sha256}\nsize {size}\n".encode()


SIGNATURE_SUFFIX = ".sig"


def signature_path(path: str | os.PathLike[str]) -> Path:
    return Path(f"{os.fspath(path)}{SIGNATURE_SUFFIX}")


def _ssh_keygen() -> str:
    found = shutil.which("ssh-keygen")
    if found is None:
        raise InvalidArgumentError(
            "signatures need OpenSSH's ssh-keygen, which is missing", hint="install openssh-client"
        )
    return found


def sign(key: str | os.PathLike[str], message: bytes) -> bytes:
    """Sign ``message`` with the private key file ``key`` (ssh-keygen may ask for its
    passphrase, or use the agent); the signature, armoured."""
    if not Path(key).is_file():
        raise InvalidArgumentError(f"signing key {os.fspath(key)} is not a file")
    result = subprocess.run(
        [_ssh_keygen(), "-q", "-Y", "sign", "-f", os.fspath(key), "-n", NAMESPACE],
        input=message,
        capture_output=True,
        check=False,
    )
    if result.returncode != 0 or not result.stdout.startswith(b"-----BEGIN SSH SIGNATURE-----"):
        detail = result.stderr.decode(errors="replace").strip() or f"exit {result.returncode}"
        raise InvalidArgumentError(f"cannot sign with {os.fspath(key)}: {detail}")
    return result.stdout


def write_signature(output: str | os.PathLike[str], signature: bytes) -> None:
    """Write a signature file atomically (after a crash: the old one or the new one)."""
    target = Path(output)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)
            f.write(signature)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class SignatureSource(Protocol):
    """A file opened for its caller by someone else (through sudo; ``bundle.Source``):
    the caller's ``name`` for it, and the signature they have beside it."""

    @property
    def name(self) -> str: ...

    def read_signature(self, error: type[DsgStorageError]) -> tuple[bytes | None, Path]: ...


def signature_of(
    path: str | os.PathLike[str], source: SignatureSource | None, error: type[DsgStorageError]
) -> tuple[bytes | None, Path]:
    """The signature of the file at ``path`` (beside it), or the one ``source`` opened."""
    if source is not None:
        return source.read_signature(error)
    beside = signature_path(path)
    return read_signature(beside, error), beside


def read_signature(
    source: str | os.PathLike[str] | int, error: type[DsgStorageError], *, name: str | None = None
) -> bytes | None:
    """The signature file's bytes, or None if there is none; a bad one raises ``error``.
    ``source`` is its path (opened without following a link) or a descriptor the caller
    opened (through sudo: as the invoking user, beside their bundle), read without
    moving its offset; ``name`` names it in errors."""
    if isinstance(source, int):
        fd, name = os.dup(source), name or f"descriptor {source}"
    else:
        name = name or os.fspath(source)
        try:
            fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise error(f"signature {name} cannot be opened: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_SIGNATURE_SIZE:
            raise error(f"signature {name} is not a regular file of at most {MAX_SIGNATURE_SIZE} bytes")
        data = os.pread(fd, MAX_SIGNATURE_SIZE + 1, 0)
    finally:
        os.close(fd)
    if len(data) > MAX_SIGNATURE_SIZE or not data.startswith(b"-----BEGIN SSH SIGNATURE-----"):
        raise error(f"signature {name} is not an OpenSSH signature")
    return data


def verify(
    message: bytes, signature: bytes, allowed_signers: str | os.PathLike[str], error: type[DsgStorageError], what: str
) -> Signature:
    """Check ``signature`` of ``message`` against the allowed-signers file; raises ``error``
    saying why when the key is not allowed or the signature does not match."""
    allowed = os.fspath(allowed_signers)
    if not Path(allowed).is_file():
        raise InvalidArgumentError(f"allowed-signers file {allowed} is not a file")
    tool = _ssh_keygen()
    with tempfile.TemporaryDirectory(prefix="dsg-storage-sig-") as private:
        sig = Path(private, "signature")  # the bytes read once, where nobody else can change them
        sig.write_bytes(signature)
        found = subprocess.run(
            [tool, "-Y", "find-principals", "-s", str(sig), "-f", allowed, "-n", NAMESPACE],
            capture_output=True,
            text=True,
            check=False,
            timeout=_TIMEOUT,
        )
        principals = [line.strip() for line in found.stdout.splitlines() if line.strip()]
        if found.returncode != 0 or not principals:
            raise error(f"{what} is signed by a key that {allowed} does not allow (for namespace {NAMESPACE})")
        for principal in principals:
            checked = subprocess.run(
                [tool, "-Y", "verify", "-f", allowed, "-I", principal, "-n", NAMESPACE, "-s", str(sig)],
                input=message,
                capture_output=True,
                check=False,
                timeout=_TIMEOUT,
            )
            if checked.returncode == 0:
                out = checked.stdout.decode(errors="replace")
                key = out.rsplit(" key ", 1)[-1].strip() if " key " in out else None
                return Signature("good", principal, key)
    raise error(
        f"{what}'s signature does not match its content: it was altered after signing, or signed as another file"
    )


def check(
    message_fn: Callable[[], bytes],
    signature: bytes | None,
    signature_file: str | os.PathLike[str],
    allowed_signers: str | os.PathLike[str] | None,
    *,
    require: bool,
    error: type[DsgStorageError],
    what: str,
) -> Signature:
    """The policy, for ``signature`` (``read_signature``'s; None: there is none): a missing
    one is refused only when ``require``; one is checked when an allowed-signers file is
    given (then a bad one is always refused). ``message_fn()`` gives the signed message
    (called only when a signature is checked, so an unsigned file is decided at once)."""
    if require and allowed_signers is None:
        raise InvalidArgumentError("requiring a signature needs an allowed-signers file (--allowed-signers)")
    if signature is None:
        if require:
            raise error(f"{what} is not signed (no {os.fspath(signature_file)}), and a signature is required")
        return Signature("unsigned")
    if allowed_signers is None:
        return Signature("unchecked")
    return verify(message_fn(), signature, allowed_signers, error, what)
