#!/usr/bin/env python3
"""The module-size budget (#24): no module under src/ over LIMIT lines unless
docs/archive/0007-core-structure.md names it, with a reason, under its SECTION heading,
as a line ``- `src/...py` ...: reason``. Run from anywhere; exit 1 when over budget.
Entries whose module is gone or back within the budget are reported, not failed: a
split on another branch should not turn CI red."""

from __future__ import annotations

import re
import sys
from pathlib import Path

LIMIT = 500
ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "archive" / "0007-core-structure.md"
SECTION = "## Modules over 500 lines"
ENTRY = re.compile(r"^- `(src/[^`]+\.py)`[^:]*:\s*\S")


def excused() -> dict[str, str]:
    """Module -> its line in the doc's section."""
    found: dict[str, str] = {}
    inside = False
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            inside = line.strip() == SECTION
        elif inside and (match := ENTRY.match(line)):
            found[match[1]] = line
    return found


def main() -> int:
    sizes = {
        path.relative_to(ROOT).as_posix(): len(path.read_bytes().splitlines())
        for path in sorted((ROOT / "src").rglob("*.py"))
    }
    listed = excused()
    over = {name: n for name, n in sizes.items() if n > LIMIT}
    unexcused = [name for name in over if name not in listed]
    for name, n in over.items():
        print(f"[budget] {name}: {n} lines" + ("" if name in listed else f" > {LIMIT}, not named in {DOC.name}"))
    for name in sorted(set(listed) - set(over)):
        state = "gone" if name not in sizes else f"{sizes[name]} lines, within the budget"
        print(f"[budget] note: {DOC.name} still names {name} ({state}): drop its line")
    if unexcused:
        print(
            f"[budget] {len(unexcused)} module(s) over {LIMIT} lines: split them, or name each under "
            f"'{SECTION}' in {DOC.relative_to(ROOT)} with the reason",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
