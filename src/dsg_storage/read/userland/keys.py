"""Encryption keys for the userland reader: from key files to the wrapping keys OpenZFS
loads, computed here and handed to the helper on its protocol pipe (never a command
line, never the environment, never a log).

A key file holds what ``zfs load-key`` would read for the encryption root's
``keyformat``: a passphrase (8 to 512 bytes, one trailing newline ignored), 64 hex
digits, or exactly 32 raw bytes. A passphrase becomes the wrapping key as libzfs makes
it: PBKDF2-HMAC-SHA1 over the root's ``pbkdf2salt`` (8 bytes, little-endian) and
``pbkdf2iters`` iterations, 32 bytes. Pure logic: nothing here reads a pool.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any

from ...errors import InvalidArgumentError
from .protocol import UserlandError

WRAPPING_KEY_LEN = 32
#: zfs_keyformat_t, as the pool records it
KEYFORMATS = {1: "raw", 2: "hex", 3: "passphrase"}
#: A key file is never larger (a passphrase is at most 512 bytes, plus a newline).
MAX_KEY_FILE = 1024
#: Iterations of PBKDF2 accepted from a pool (zfs's default is 350,000): a hostile pool
#: cannot make a passphrase take hours.
MAX_ITERS = 10_000_000


class EncryptionKeyError(UserlandError):
    """An encrypted dataset's key is missing, malformed or wrong."""


def read_key_file(path: str | os.PathLike[str]) -> bytes:
    """A key file's bytes, bounded; an unreadable one is our error, naming it."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise InvalidArgumentError(f"key file {os.fspath(path)}: {exc.strerror}") from None
    if len(data) > MAX_KEY_FILE:
        raise InvalidArgumentError(f"key file {os.fspath(path)} is larger than {MAX_KEY_FILE} bytes: not a ZFS key")
    return data


def wrapping_key(root: str, props: Mapping[str, Any], material: bytes) -> bytes:
    """The 32-byte wrapping key of encryption root ``root`` (its properties as the helper
    read them) from a key file's ``material``."""
    form = KEYFORMATS.get(_prop(props, "keyformat") or 0)
    if form == "raw":
        if len(material) != WRAPPING_KEY_LEN:
            raise EncryptionKeyError(f"{root} takes a raw key of {WRAPPING_KEY_LEN} bytes, not {len(material)}")
        return material
    text = material[:-1] if material.endswith(b"\n") else material
    if form == "hex":
        try:
            key = bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            key = b""
        if len(key) != WRAPPING_KEY_LEN:
            raise EncryptionKeyError(f"{root} takes a hex key of {WRAPPING_KEY_LEN * 2} hex digits")
        return key
    if form == "passphrase":
        if not 8 <= len(text) <= 512:
            raise EncryptionKeyError(f"{root} takes a passphrase of 8 to 512 bytes, not {len(text)}")
        salt, iters = _prop(props, "pbkdf2salt"), _prop(props, "pbkdf2iters")
        if salt is None or iters is None or not 0 < iters <= MAX_ITERS:
            raise EncryptionKeyError(f"{root}: the pool records no usable pbkdf2salt/pbkdf2iters for its passphrase")
        return hashlib.pbkdf2_hmac("sha1", text, salt.to_bytes(8, "little"), iters, WRAPPING_KEY_LEN)
    raise EncryptionKeyError(f"{root}: the pool records no key format this reader knows")


def _prop(props: Mapping[str, Any], name: str) -> int | None:
    entry = props.get(name)
    value = entry.get("value") if isinstance(entry, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 64 else None


def encryption_root(props: Mapping[str, Any]) -> str | None:
    """The encryption root a dataset's properties name, None if it is not encrypted."""
    entry = props.get("encryptionroot")
    value = entry.get("value") if isinstance(entry, dict) else None
    return value if isinstance(value, str) and value else None


def assign(keys: Mapping[str, bytes], roots: set[str]) -> dict[str, bytes]:
    """Which key file's material goes to which encryption root: ``keys`` maps a root's
    name to its material, ``""`` to the material of every root not named."""
    unknown = sorted(set(keys) - roots - {""})
    if unknown:
        shown = ", ".join(sorted(roots)) or "none"
        raise InvalidArgumentError(f"{', '.join(unknown)}: not an encryption root of this pool (its roots: {shown})")
    return {root: keys[root] if root in keys else keys[""] for root in sorted(roots) if root in keys or "" in keys}
