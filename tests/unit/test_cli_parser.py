"""The grammar built for one command parses like the whole one (cli/parser.py)."""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
from collections.abc import Callable

import pytest

from dsg_storage.cli import parser


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["status", "tank/a"], "status"),
        (["--json", "--allow", "tank", "-v", "commit", "tank/a", "tx"], "commit"),
        (["--allow=tank", "--cache", "f", "queue", "stats"], "queue"),
        (["--allow", "status", "begin", "tank/a"], "begin"),  # "status" is --allow's value
        (["--", "status"], None),  # argparse decides what "--" means
        (["--al", "tank", "status"], None),  # abbreviations: argparse's to resolve
        (["--help"], None),
        (["nosuch"], None),
        ([], None),
    ],
)
def test_command_is_found_only_when_certain(argv: list[str], command: str | None) -> None:
    assert parser.command_in(argv) == command


@pytest.mark.parametrize(
    "argv",
    [
        ["status", "tank/a"],
        ["--json", "begin", "tank/a", "--mountpoint", "/srv/a", "--owner", "1:1", "--dry-run"],
        ["-v", "commit", "tank/a", "tx", "--wait", "3", "-m", "msg"],
        ["recover", "tank/a", "--abort-stale", "7d"],
        ["bundle", "import", "f.dsgb", "--into", "tank/b", "--require-signature"],
        ["queue", "flush", "--pool", "tank"],
        ["prune", "tank/a", "--keep-last", "3", "--keep-daily", "7"],
        ["cache", "clear", "--kind", "history"],
    ],
)
def test_one_command_parses_as_the_whole_grammar(argv: list[str]) -> None:
    assert parser.command_in(argv) is not None
    assert parser.parse(argv) == parser.build().parse_args(argv)


def test_errors_of_a_named_command_read_the_same() -> None:
    def error(build: Callable[[], argparse.ArgumentParser], argv: list[str]) -> str:
        out = io.StringIO()
        with contextlib.redirect_stderr(out), pytest.raises(SystemExit):
            build().parse_args(argv)
        return out.getvalue()

    for argv in (["commit", "tank/a"], ["recover", "tank/a", "--abort-stale", "soon"], ["queue"]):
        only = parser.command_in(argv)
        assert error(functools.partial(parser.build, only), argv) == error(parser.build, argv)


def test_status_refuses_a_bad_name_before_it_needs_zfs(capsys: pytest.CaptureFixture[str]) -> None:
    from dsg_storage.cli import main

    assert main(["status", "tank/repo@snap"]) == 2  # exit 2 with or without libzfs_core
    assert "name a filesystem, not a snapshot" in capsys.readouterr().err
