"""The helper's protocol (version 2), as the parent sees it: requests out, replies checked.

Requests are one JSON object a line on the helper's stdin: ``{"op": ..., ...}``. The
helper answers each with JSON lines on its stdout:

- ``{"hello": 1, "pid": N}`` once, at start (the protocol version);
- for ``walk``: any number of ``{"entries": [[path, stat]...]}`` lines before the reply;
- for ``read``: nothing before the reply, whose result is how many bytes the helper put
  into the window (shared memory the parent made, sealed at its size: ``client.WINDOW``);
- then ``{"ok": true, "result": ...}`` or ``{"ok": false, "errno": E, "error": "..."}``.

Everything the helper sends is outside input (it reads a pool image someone else made):
each line is bounded, parsed once here and checked against the shape expected, so a bad
reply is a ``HelperProtocolError``, never a traceback or an unbounded read.
"""

from __future__ import annotations

import json
import stat as stat_
from typing import Any

from ...errors import DsgStorageError

VERSION = 2
#: Longest line accepted from the helper (a dataset list of a large pool fits).
MAX_LINE = 16 << 20
#: stat fields the helper sends, with their types (None allowed where it may be absent).
_STAT_INTS = ("obj", "mode", "size", "uid", "gid", "links")
_STAT_TIMES = ("atime", "mtime", "ctime")
#: Extended attributes a stat may carry (the helper sends at most as many).
MAX_XATTRS = 256


class UserlandError(DsgStorageError, OSError):
    """The userland reader could not do what was asked (base of its errors)."""


class HelperProtocolError(UserlandError):
    """The helper sent something that is not our protocol version."""


def request(op: str, **args: Any) -> bytes:
    return json.dumps({"op": op, **args}, separators=(",", ":")).encode() + b"\n"


def parse(line: bytes) -> dict[str, Any]:
    """One line from the helper as a JSON object."""
    if len(line) > MAX_LINE:
        raise HelperProtocolError(f"the helper sent a line of {len(line)} bytes (at most {MAX_LINE})")
    try:
        value = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise HelperProtocolError(f"the helper sent a line that is not JSON: {line[:80]!r}") from exc
    if not isinstance(value, dict):
        raise HelperProtocolError(f"the helper sent {type(value).__name__}, not an object: {line[:80]!r}")
    return value


_U64 = 1 << 64


def _is_int(value: object) -> bool:
    """A non-negative integer that fits the 64 bits ZFS keeps it in."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _U64


def hello(message: dict[str, Any]) -> int:
    """The helper's pid, from its hello; its protocol must be ours."""
    if message.get("hello") != VERSION or not _is_int(message.get("pid")):
        raise HelperProtocolError(f"the helper does not speak protocol {VERSION}: {str(message)[:120]}")
    return int(message["pid"])


def outcome(message: dict[str, Any]) -> tuple[bool, Any, int, str]:
    """(ok, result, errno, error) of a reply line."""
    ok = message.get("ok")
    if ok is True and "result" in message:
        return True, message["result"], 0, ""
    if ok is False and _is_int(message.get("errno")) and isinstance(message.get("error"), str):
        return False, None, int(message["errno"]), str(message["error"])[:2000]
    raise HelperProtocolError(f"the helper sent a reply of no known shape: {str(message)[:120]}")


def stat_record(value: object) -> dict[str, Any]:
    """A stat the helper sent, checked: integers, [seconds, nanoseconds] times, hex strings.
    (A listing checks thousands of them: one pass over the numbers, no per-field calls.)"""
    if type(value) is not dict:
        raise HelperProtocolError("a stat from the helper is not an object")
    try:
        numbers = [value[name] for name in _STAT_INTS]
        times = [value[name] for name in _STAT_TIMES]
    except KeyError as exc:
        raise HelperProtocolError(f"a stat from the helper has no {exc.args[0]}: {str(value)[:120]}") from None
    for pair in times:
        if type(pair) is not list or len(pair) != 2:
            raise HelperProtocolError(f"a stat from the helper has a bad time: {str(value)[:120]}")
        numbers += pair
    if not all(type(n) is int and 0 <= n < _U64 for n in numbers):
        raise HelperProtocolError(f"a stat from the helper has a field that is not a valid number: {str(value)[:120]}")
    raw = value.get("symlink")
    if raw is not None and not (isinstance(raw, str) and _is_hex(raw)):
        raise HelperProtocolError("a stat from the helper has a bad symlink")
    xattrs = value.get("xattrs")
    if xattrs and not _is_xattrs(xattrs):
        raise HelperProtocolError(f"a stat from the helper has bad xattrs: {str(xattrs)[:120]}")
    return value


def _is_xattrs(value: object) -> bool:
    """[[name, hex value or None]...], at most MAX_XATTRS of them."""
    return (
        isinstance(value, list)
        and len(value) <= MAX_XATTRS
        and all(
            isinstance(item, list)
            and len(item) == 2
            and isinstance(item[0], str)
            and (item[1] is None or (isinstance(item[1], str) and _is_hex(item[1])))
            for item in value
        )
    )


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True


def entries(message: dict[str, Any]) -> list[tuple[str, dict[str, Any]]] | None:
    """[(path, stat)...] for an ``{"entries": [[path, stat]...]}`` line of a walk, None for
    another line."""
    if "entries" not in message:
        return None
    items = message["entries"]
    if type(items) is not list:
        raise HelperProtocolError(f"bad walk entries from the helper: {str(message)[:120]}")
    return [_entry(item) for item in items]


def _entry(item: object) -> tuple[str, dict[str, Any]]:
    if not (type(item) is list and len(item) == 2 and type(item[0]) is str and item[0]):
        raise HelperProtocolError(f"bad walk entry from the helper: {str(item)[:120]}")
    path = item[0]
    if path.startswith("/") or path.endswith("/") or "//" in path or any(p in (".", "..") for p in path.split("/")):
        raise HelperProtocolError(f"the helper sent a path that is not beneath the root: {path[:120]!r}")
    return path, stat_record(item[1])


def resolved(value: object, depth: int) -> tuple[dict[str, Any], bool, bool]:
    """(stat, missing, blocked) of a ``resolve`` result for a path of ``depth`` components:
    found, the stat is the path's; else that of the last component resolved."""
    if type(value) is not dict or not _is_int(value.get("depth")) or value["depth"] > depth:
        raise HelperProtocolError(f"the helper's resolve reply is malformed: {str(value)[:120]}")
    missing, blocked = value.get("missing"), value.get("blocked")
    if type(missing) is not bool or type(blocked) is not bool or (missing and blocked):
        raise HelperProtocolError(f"the helper's resolve reply is malformed: {str(value)[:120]}")
    if not (missing or blocked) and value["depth"] != depth:
        raise HelperProtocolError("the helper resolved a path to the wrong depth")
    return stat_record(value.get("stat")), missing, blocked


def fetched(value: dict[str, Any], st: dict[str, Any], window: int) -> int | None:
    """How many bytes of a regular file a ``resolve`` with ``fetch`` put into the window:
    all of it, or None (not fetched)."""
    count = value.get("fetched")
    if count is None:
        return None
    if not _is_int(count) or count != st["size"] or count > window or not stat_.S_ISREG(st["mode"]):
        raise HelperProtocolError(f"the helper fetched {str(count)[:40]} bytes of a file of {st['size']}")
    return int(count)


def dataset_records(value: object) -> list[dict[str, Any]]:
    """The ``datasets`` result: [{"name", "objset_type", "props": {name: value...}}]."""
    if not isinstance(value, list):
        raise HelperProtocolError("the dataset list from the helper is not a list")
    for item in value:
        if not (
            isinstance(item, dict)
            and isinstance(item.get("name"), str)
            and _is_int(item.get("objset_type"))
            and isinstance(item.get("props"), dict)
        ):
            raise HelperProtocolError(f"a dataset record from the helper is malformed: {str(item)[:120]}")
    return value


def pool_configs(value: object) -> list[dict[str, Any]]:
    """The ``find`` result: the pool configs read from the labels (name, pool_guid, state...)."""
    if not isinstance(value, list):
        raise HelperProtocolError("the pool list from the helper is not a list")
    for item in value:
        if not (isinstance(item, dict) and isinstance(item.get("name"), str) and _is_int(item.get("pool_guid"))):
            raise HelperProtocolError(f"a pool config from the helper is malformed: {str(item)[:120]}")
        if not _is_int(item.get("state", 0)) or not _is_int(item.get("hostid", 0)):
            raise HelperProtocolError(f"a pool config from the helper is malformed: {str(item)[:120]}")
    return value
