"""The ``dsg-storage`` command line: ``main`` (``commands``: the command table and the
exit statuses; each command's handler in the module of its noun, given a
``context.Context``; their grammar in ``parser``) and its demo."""

# No `from __future__ import annotations` here, in dsg_storage/__init__.py or in
# _version.py, and no import of the errors: `dsg-storage --version` loads these three
# modules and nothing else of ours (the __future__ module alone costs ~6 ms under
# emulation, the errors as much again).
TYPE_CHECKING = False  # not typing's: see dsg_storage/__init__.py
if TYPE_CHECKING:
    from collections.abc import Sequence


def main(argv: "Sequence[str] | None" = None) -> int:
    """Run one ``dsg-storage`` command (``commands.main``); returns its exit status.
    ``--version`` alone is answered here, before argparse and the rest are imported."""
    import sys

    if list(sys.argv[1:] if argv is None else argv) == ["--version"]:
        from .._version import __version__

        print(f"dsg-storage {__version__}")  # what argparse's version action prints
        return 0
    from .commands import main as run

    return run(argv)


__all__ = ["main"]
