"""Extended attributes in file answers: which ones, how many, how they are shown.

A ``FileEntry`` carries a file's extended attributes of the **user namespace** (``user.*``),
the ones any reader of the file may see and the ones sync tools write; ``trusted.*`` and
``security.*`` need privileges a reader may lack, and ``system.*`` holds ACLs, which
are not part of a file's answer. The same rule applies live, offline and in userland, so
the three answer alike.

Bounded: the first ``MAX_XATTRS`` attributes in name order, as long as their values add
up to at most ``MAX_XATTR_BYTES``; ``FileEntry.xattrs_omitted`` counts the others, and
those this process may not read (read them with ``getfattr`` on a live mount). On the command line (``--json``) the values
are base64: ``"xattrs": {"user.note": "bm90ZQ=="}``.
"""

from __future__ import annotations

import base64
import errno
import os
from collections.abc import Iterable

#: At most this many extended attributes per file are returned.
MAX_XATTRS = 32
#: At most this many bytes of values per file are returned (Linux's limit for one value).
MAX_XATTR_BYTES = 64 << 10
NAMESPACE = "user."
#: Namespaces Linux knows; a name stored without one (Solaris-style) is of the user's.
_KNOWN = ("user.", "trusted.", "security.", "system.")

Xattrs = tuple[tuple[str, bytes], ...]


def linux_name(stored: str) -> str:
    """The Linux name of an attribute as ZFS stores it (with or without its namespace)."""
    return stored if stored.startswith(_KNOWN) else NAMESPACE + stored


def bounded(found: Iterable[tuple[str, bytes | None]]) -> tuple[Xattrs, int]:
    """(the attributes to return, how many others were left out) from (name, value)
    pairs, a value of None being one too large to read. Only ``user.*`` names count."""
    mine = sorted((name, value) for name, value in dict(found).items() if name.startswith(NAMESPACE))
    kept: list[tuple[str, bytes]] = []
    total = 0
    for name, value in mine:
        if value is None:  # too large, or not ours to read: left out, counted
            continue
        if len(kept) == MAX_XATTRS or total + len(value) > MAX_XATTR_BYTES:
            break
        kept.append((name, value))
        total += len(value)
    return tuple(kept), len(mine) - len(kept)


def read_at(dirfd: int, name: str) -> tuple[Xattrs, int]:
    """The user attributes of entry ``name`` of directory ``dirfd`` ("" for the directory
    itself), never following a link; a file that has none, or a file system that has
    none, gives ``((), 0)``."""
    # The directory itself through its descriptor; an entry through /proc/self/fd/N (the
    # checked directory) and its name, the last component not followed.
    path: int | str = f"/proc/self/fd/{dirfd}/{name}" if name else dirfd
    follow = not name  # a descriptor is no link (Python refuses follow_symlinks=False with one)
    try:
        names = os.listxattr(path, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.ENODATA, errno.EPERM):
            return (), 0
        raise
    found: list[tuple[str, bytes | None]] = []
    for attr in names:
        if not attr.startswith(NAMESPACE):
            continue
        try:
            found.append((attr, os.getxattr(path, attr, follow_symlinks=follow)))
        except OSError as exc:
            if exc.errno in (errno.E2BIG, errno.ERANGE, errno.EACCES, errno.EPERM):
                found.append((attr, None))
            elif exc.errno != errno.ENODATA:  # removed since listed: not there
                raise
    return bounded(found)


def to_json(xattrs: Xattrs) -> dict[str, str]:
    """``{name: base64 of the value}``, as ``--json`` shows them."""
    return {name: base64.b64encode(value).decode() for name, value in xattrs}
