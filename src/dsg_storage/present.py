"""Text shown to people that came from somewhere else, made safe for a terminal.

Commit messages, snapshot and dataset names, user properties, file names in a
repository, a bundle's metadata, a signer's name, error messages quoting any of these:
whoever wrote them may have put terminal control sequences in them (ESC ``[2J`` clears
the screen, OSC sequences set the title or the clipboard, C1 controls such as U+009B
act as ESC ``[`` on many terminals) or a newline that makes one value look like two
lines of output. ``shown`` writes every such character as a visible escape (``\\x1b``,
``\\n``, ``\\u202e``), so each value stays on its own line and nothing in it reaches the
terminal as a control. Backslashes are left as they are: this is for reading, not a
reversible encoding (``--json`` is that: JSON escapes control characters itself).

Escaped: C0 controls and DEL (tab and newline too: they separate fields and lines),
C1 controls (U+0080 to U+009F), lone surrogates (printing one would raise
``UnicodeEncodeError``), the line and paragraph separators, and the bidirectional
controls that reorder what a terminal shows (``Trojan Source``).
"""

from __future__ import annotations

import re

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def shown(text: str) -> str:
    """``text`` with every control character (see the module's docstring) escaped visibly;
    text without any is returned as it is."""
    return _UNSAFE.sub(_escape, text)
