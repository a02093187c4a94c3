"""JSON from files somebody else wrote, parsed with bounded memory and depth.

``json.loads`` trusts its input's shape: 16 MiB of ``[[],[],...]`` becomes four million
lists (about 400 MB), and deep nesting raises ``RecursionError``. ``loads`` refuses such
input before parsing, by counting in the raw bytes (C speed, no allocation) the
characters that open a container (``[``, ``{``) and those that separate items (``,``).
Counting them inside strings too only overcounts: a document within the limits is never
refused for its strings' punctuation unless it holds hundreds of thousands of them.
After parsing, nesting deeper than ``max_depth`` is refused too, and so is a string (or
an object's key) holding a lone surrogate: JSON's ``\\ud800`` escape makes one, Python
keeps it, and it fails later wherever the text is encoded (printed, written, set as a
ZFS property), far from the file it came from.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_CONTAINERS = 50_000  # lists and objects: an empty one costs ~64 bytes parsed
MAX_ITEMS = 500_000  # separators: a float item costs ~32 bytes parsed
MAX_DEPTH = 32
_SURROGATE = re.compile("[\ud800-\udfff]")


class JsonLimitError(ValueError):
    """The document is not JSON, or exceeds a limit; the message says which.
    ``decode_error`` is the parser's error when the document is not JSON."""

    def __init__(self, message: str, decode_error: json.JSONDecodeError | None = None) -> None:
        super().__init__(message)
        self.decode_error = decode_error


def loads(
    data: bytes,
    *,
    max_size: int,
    max_containers: int = MAX_CONTAINERS,
    max_items: int = MAX_ITEMS,
    max_depth: int = MAX_DEPTH,
) -> Any:
    """Parse ``data`` (UTF-8 JSON) or raise ``JsonLimitError`` saying what is wrong."""
    if len(data) > max_size:
        raise JsonLimitError(f"it takes {len(data)} bytes, more than its limit of {max_size}")
    containers = data.count(b"[") + data.count(b"{")
    if containers > max_containers:
        raise JsonLimitError(f"it holds {containers} lists or objects, more than the limit of {max_containers}")
    items = data.count(b",")
    if items > max_items:
        raise JsonLimitError(f"it holds {items} items, more than the limit of {max_items}")
    try:
        value = json.loads(data)
    except RecursionError:
        raise JsonLimitError(f"it is nested more than {max_depth} levels deep") from None
    except json.JSONDecodeError as exc:
        raise JsonLimitError(f"it is not valid JSON ({exc})", exc) from None
    except ValueError as exc:  # UnicodeDecodeError
        raise JsonLimitError(f"it is not valid JSON ({exc})") from None
    # The walks below are skipped where the raw bytes rule out what they look for (most
    # records of a bundle are small and plain): nesting needs at least as many containers,
    # and a lone surrogate needs a \u escape or bytes beyond ASCII (a BOM, a surrogate's
    # UTF-8 form) or a NUL (which makes json read UTF-16 or UTF-32).
    if containers > max_depth and depth(value, max_depth) > max_depth:
        raise JsonLimitError(f"it is nested more than {max_depth} levels deep")
    plain = data.isascii() and b"\\u" not in data and b"\x00" not in data
    if not plain and not _all_text(value):
        raise JsonLimitError("it holds a string that is not Unicode text (a lone surrogate, such as \\ud800)")
    return value


def _all_text(value: Any) -> bool:
    """Whether every string in ``value`` (keys included) can be encoded as UTF-8; iterative
    and allocation-free per string (a scan, not an encoding), for any size the caps allow."""
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not item.isascii() and _SURROGATE.search(item):
                return False
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


def depth(value: Any, limit: int) -> int:
    """Nesting depth of a parsed value (a scalar is 0), counted up to ``limit + 1``;
    iterative, so any depth the parser accepted is measured without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            level += 1
            deepest = max(deepest, level)
            if level > limit:
                return level
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level) for child in children if isinstance(child, dict | list))
    return deepest
