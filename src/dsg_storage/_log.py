"""Our loggers, with :mod:`logging` imported only when a message is logged.

Importing logging (it brings traceback, tokenize, string, threading...) costs a command
that logs nothing ~80 ms under emulation: ``queue stats`` and ``status`` never log unless
something goes wrong. ``getLogger(name)`` stands for ``logging.getLogger(name)``: every
attribute (``debug``, ``warning``, ``setLevel``...) is the real logger's, looked up when
used, so records, levels and handlers are logging's own.

``configure(**kwargs)`` is ``logging.basicConfig(**kwargs)`` (the command line's), done
now if logging is loaded, else just before one of these loggers is first used, so that a
message looks the same either way. A module that logs through ``logging`` itself needs
``configure_now()`` before its first message.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # not typing's: see dsg_storage/__init__.py
if TYPE_CHECKING:
    import logging
    from typing import Any

_pending: dict[str, Any] | None = None  # basicConfig's arguments, until logging is used


def configure(**kwargs: Any) -> None:
    """``logging.basicConfig(**kwargs)``, now or when the first message is logged."""
    global _pending
    _pending = kwargs
    if "logging" in sys.modules:
        configure_now()


def configure_now() -> None:
    """Import logging and apply what ``configure`` was given, if anything is pending."""
    global _pending
    import logging

    if _pending is not None:
        kwargs, _pending = _pending, None
        logging.basicConfig(**kwargs)


class _Logger:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __getattr__(self, attr: str) -> Any:
        configure_now()
        import logging

        # The bound method itself, called from the caller's frame: the record's
        # file, line and function are the caller's, as with a logger of its own.
        return getattr(logging.getLogger(self.name), attr)

    def __repr__(self) -> str:
        return f"<lazy logger {self.name}>"


def getLogger(name: str) -> logging.Logger:  # logging's name: it stands in for logging.getLogger
    """``logging.getLogger(name)``, imported and looked up when first used."""
    return _Logger(name)  # type: ignore[return-value]
