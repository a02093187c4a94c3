"""The environment is read in one place (``settings.Settings.from_environ``), once per
command, and, run through sudo, without the ``DSG_STORAGE_*`` variables; every command
of the grammar has its handler."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import dsg_storage
from dsg_storage.cli import commands, parser
from dsg_storage.errors import InvalidArgumentError, InvalidNameError, PolicyError
from dsg_storage.settings import Settings

SRC = Path(dsg_storage.__file__).resolve().parent
ENV = {
    "DSG_STORAGE_ALLOW": "tank/a,tank/b",
    "DSG_STORAGE_LOCK_DIR": "/run/l",
    "DSG_STORAGE_QUEUE": "/q.sqlite",
    "DSG_STORAGE_QUEUE_MAX_PENDING": "7",
    "DSG_STORAGE_CACHE": "/c.sqlite",
    "PYTHONPATH": "/src",
    "HOME": "/root",
}


def test_from_environ_reads_every_setting() -> None:
    settings = Settings.from_environ(ENV)
    assert settings.allow.prefixes == ("tank/a", "tank/b")
    assert (settings.lock_dir, settings.queue_path, settings.queue_max_pending, settings.cache_path) == (
        "/run/l",
        "/q.sqlite",
        7,
        "/c.sqlite",
    )
    assert dict(settings.carried) == {k: v for k, v in ENV.items() if k not in ("HOME", "DSG_STORAGE_CACHE")}
    assert not settings.sudo and settings.invoker is None
    assert Settings.from_environ({}) == Settings()
    assert Settings.from_environ({"DSG_STORAGE_QUEUE": ""}).queue_path is None  # empty: unset


def test_bad_values_are_refused_when_read() -> None:
    with pytest.raises(InvalidArgumentError, match="DSG_STORAGE_QUEUE_MAX_PENDING"):
        Settings.from_environ({"DSG_STORAGE_QUEUE_MAX_PENDING": "0"})
    with pytest.raises(InvalidNameError):
        Settings.from_environ({"DSG_STORAGE_ALLOW": "/etc"})
    with pytest.raises(PolicyError):
        _ = Settings.from_environ({"SUDO_UID": "1000; rm", "SUDO_GID": "1"}).invoker


def test_the_command_line_ignores_our_variables_under_sudo() -> None:
    sudo = {**ENV, "DSG_STORAGE_QUEUE_MAX_PENDING": "lots", "SUDO_UID": "1000", "SUDO_GID": "100", "SUDO_USER": "u"}
    settings = Settings.for_cli(sudo)
    assert settings.sudo and str(settings.invoker) == "1000:100" and settings.sudo_user == "u"
    assert settings.allow.prefixes == () and settings.lock_dir is settings.queue_path is settings.cache_path is None
    assert settings.queue_max_pending is None and dict(settings.carried) == {"PYTHONPATH": "/src"}
    assert Settings.for_cli(ENV) == Settings.from_environ(ENV)


def test_only_the_settings_module_reads_the_environment() -> None:
    # cli/commands.py hands os.environ to Settings.for_cli (and to sudo, which scrubs it);
    # testpool and testing are tools of their own.
    allowed = {"settings.py", "cli/commands.py"}
    reading = re.compile(r"os\.environ|getenv\(")
    found = {
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if reading.search(path.read_text()) and not str(path.relative_to(SRC)).startswith(("testpool/", "testing/"))
    }
    assert found <= allowed, found - allowed


def test_every_command_and_action_of_the_grammar_has_a_handler() -> None:
    keys = set()
    for name in parser.COMMANDS:
        args = parser.build(name)
        group: Any = next(a for a in args._actions if a.dest == "command")
        actions: list[Any] = [a for a in group.choices[name]._actions if a.dest == f"{name.replace('-', '_')}_command"]
        keys |= {f"{name} {action}" for a in actions for action in a.choices} if actions else {name}
    assert keys == set(commands.HANDLERS)
    for key in commands.HANDLERS:
        module, _, function = commands.HANDLERS[key].rpartition(".")
        assert callable(getattr(__import__(f"dsg_storage.cli.{module}", fromlist=[function]), function)), key
