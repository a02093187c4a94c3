"""Parsing and checking what a user says about a repository: mount path, owner, mode,
the user properties recorded with a transaction."""

from __future__ import annotations

import grp
import os
import posixpath
import pwd
import re
from collections.abc import Mapping

import attrs

from .. import names
from ..errors import InvalidArgumentError


@attrs.frozen
class Owner:
    uid: int
    gid: int

    def __str__(self) -> str:
        return f"{self.uid}:{self.gid}"

    @classmethod
    def parse(cls, text: str | tuple[int, int] | Owner) -> Owner:
        """``"1000:1000"``, ``"alice:staff"`` or ``(1000, 1000)``."""
        if isinstance(text, Owner):
            return text
        if isinstance(text, tuple):
            uid, gid = text
            return cls(_id(uid, "uid"), _id(gid, "gid"))
        user, sep, group = str(text).partition(":")
        if not sep or not user or not group:
            raise InvalidArgumentError(f"owner {text!r} is not UID:GID")
        return cls(_lookup(user, pwd.getpwnam, "user"), _lookup(group, grp.getgrnam, "group"))

    @classmethod
    def parse_ids(cls, text: str) -> Owner:
        """``"1000:1000"`` only (numbers, no name lookup): how the pool records an owner."""
        uid, sep, gid = text.partition(":")
        if not sep or not _decimal(uid) or not _decimal(gid):
            raise InvalidArgumentError(f"owner {text!r} is not UID:GID")
        return cls(_id(int(uid), "uid"), _id(int(gid), "gid"))

    @classmethod
    def current(cls) -> Owner:
        return cls(os.geteuid(), os.getegid())


def _decimal(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also takes other scripts' digits ("١"), which
    ``int`` turns into numbers."""
    return text.isascii() and text.isdigit()


def _id(value: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**32 - 1:
        raise InvalidArgumentError(f"{what} {value!r} is not a number from 0 to 4294967294")
    return value


def _lookup(text: str, getter: object, what: str) -> int:
    if _decimal(text):
        return _id(int(text), "uid" if what == "user" else "gid")
    try:
        entry = getter(text)  # type: ignore[operator]
    except KeyError:
        raise InvalidArgumentError(f"{what} {text!r} does not exist") from None
    return int(entry[2])


def parse_mode(value: str | int) -> int:
    """``"0750"``, ``"750"`` or ``0o750``: permission bits only (at most 0o7777)."""
    if isinstance(value, int) and not isinstance(value, bool):
        mode = value
    else:
        try:
            mode = int(str(value), 8)
        except ValueError:
            raise InvalidArgumentError(f"mode {value!r} is not an octal number such as 0755") from None
    if not 0 <= mode <= 0o7777:
        raise InvalidArgumentError(f"mode {value!r} is out of range (0 to 07777)")
    return mode


def check_mountpoint(path: str) -> str:
    """An absolute, normalized path that is not ``/``."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidArgumentError(f"mountpoint {path!r} is not an absolute path")
    if "\0" in path or "\n" in path:
        raise InvalidArgumentError(f"mountpoint {path!r} contains a NUL or newline")
    normal = posixpath.normpath(path)
    if normal != path.rstrip("/") or ".." in path.split("/"):
        raise InvalidArgumentError(f"mountpoint {path!r} is not normalized (write {normal!r})")
    if normal == "/":
        raise InvalidArgumentError("mountpoint '/' is refused")
    return normal


#: A ZFS user property's name (zfsprops(7)): a colon among lowercase letters, digits and
#: ``:-._``, shorter than 256 characters; its value shorter than 8192 bytes.
_USER_PROP = re.compile(r"[a-z0-9:._-]*:[a-z0-9:._-]*")
_MAX_NAME, _MAX_VALUE = 255, 8191


def check_user_properties(props: Mapping[str, str]) -> dict[str, str]:
    """``props`` as ``Repository.begin`` records them with a transaction: each a ZFS user
    property ZFS would take, none of those dsg-storage keeps for itself (its own
    ``dsg-storage:`` names, except ``names.CALLER_PROPS``, and the snapshot tools' skip
    mark, which it manages on its temporaries)."""
    checked: dict[str, str] = {}
    for key, value in props.items():
        if not isinstance(key, str) or not _USER_PROP.fullmatch(key) or len(key) > _MAX_NAME:
            raise InvalidArgumentError(
                f"property {key!r} is not a ZFS user property name "
                "(module:property, lowercase letters, digits and ':-._', at most 255)"
            )
        if (key.startswith(names.PROP_PREFIX) and key not in names.CALLER_PROPS) or key == names.P_AUTO_SNAPSHOT:
            raise InvalidArgumentError(f"property {key!r} is dsg-storage's own: a transaction cannot be given it")
        if not isinstance(value, str) or not _storable(value):
            raise InvalidArgumentError(
                f"property {key}: its value is not UTF-8 text of at most {_MAX_VALUE} bytes without NUL"
            )
        checked[key] = value
    return checked


def _storable(value: str) -> bool:
    """Whether ZFS can hold ``value``: UTF-8 (no lone surrogate), no NUL, short enough."""
    try:
        return "\0" not in value and len(value.encode("utf-8")) <= _MAX_VALUE
    except UnicodeEncodeError:
        return False
