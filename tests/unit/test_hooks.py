"""The zedlet and systemd units: their contents, checked field by field, and by
systemd-analyze where this machine has it (the field checks run everywhere)."""

from __future__ import annotations

import configparser
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from dsg_storage import InvalidArgumentError
from dsg_storage.cli.commands import main
from dsg_storage.hooks import SERVICE, TIMER, ZEDLET, carried_env, install, render

COMMAND = [sys.executable, "-m", "dsg_storage"]
ENV = {"DSG_STORAGE_ALLOW": "tank/data", "DSG_STORAGE_QUEUE": "/var/lib/dsg-storage/queue.sqlite"}


def unit(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def test_the_units_say_what_systemd_needs() -> None:
    files = {f.name: f for f in render(COMMAND, ENV)}
    service = unit(files[SERVICE].content)
    assert service["Service"]["Type"] == "oneshot"
    assert service["Service"]["ExecStart"] == f"{sys.executable} -m dsg_storage gc"
    assert "zfs-import.target" in service["Unit"]["After"]
    timer = unit(files[TIMER].content)
    assert timer["Timer"]["Unit"] == SERVICE and timer["Timer"]["OnUnitActiveSec"] == "5min"
    assert timer["Install"]["WantedBy"] == "timers.target"
    environment = [line for line in files[SERVICE].content.splitlines() if line.startswith("Environment=")]
    assert environment == [
        'Environment="DSG_STORAGE_ALLOW=tank/data"',
        'Environment="DSG_STORAGE_QUEUE=/var/lib/dsg-storage/queue.sqlite"',
    ]
    assert (files[SERVICE].mode, files[TIMER].mode) == (0o644, 0o644)


def test_the_units_pass_systemd_analyze_verify_where_it_exists(tmp_path: Path) -> None:
    files = render(COMMAND, ENV)
    written = install(files, zedlet_dir=None, systemd_dir=str(tmp_path))
    assert sorted(Path(p).name for p in written) == [SERVICE, TIMER]
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return  # the field checks above are the check on this machine
    result = subprocess.run(
        [analyze, "verify", *written],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"},
    )
    problems = [line for line in result.stderr.splitlines() if any(n in line for n in (SERVICE, TIMER))]
    assert result.returncode == 0 and not problems, result.stderr


def test_the_zedlet_runs_the_queue_for_the_imported_pool(tmp_path: Path) -> None:
    (zedlet,) = [f for f in render(COMMAND, ENV) if f.name == ZEDLET]
    assert zedlet.name.startswith("pool_import-") and zedlet.name.endswith(".sh") and zedlet.mode == 0o755
    (path,) = install([zedlet], zedlet_dir=str(tmp_path), systemd_dir=None)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o755
    # run it with a stand-in command that prints its argv and environment
    fake = tmp_path / "fake-dsg-storage"
    fake.write_text('#!/bin/sh\necho "$@"\necho "allow=$DSG_STORAGE_ALLOW queue=$DSG_STORAGE_QUEUE"\n')
    fake.chmod(0o755)
    (script,) = [f for f in render([str(fake)], ENV) if f.name == ZEDLET]
    Path(path).write_text(script.content)
    out = subprocess.run([path], env={"ZEVENT_POOL": "tank"}, capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [
        "recover --pool tank",
        "allow=tank/data queue=/var/lib/dsg-storage/queue.sqlite",
        "queue flush --pool tank",
        "allow=tank/data queue=/var/lib/dsg-storage/queue.sqlite",
    ]
    # a failed recovery does not keep the queue from running, and is the exit status
    fake.write_text('#!/bin/sh\necho "$@"\n[ "$1" != recover ]\n')
    ran = subprocess.run([path], env={"ZEVENT_POOL": "tank"}, capture_output=True, text=True, check=False)
    assert ran.stdout.splitlines() == ["recover --pool tank", "queue flush --pool tank"] and ran.returncode == 1
    # without a pool (another event, a manual run) it does nothing
    assert subprocess.run([path], env={}, capture_output=True, text=True, check=True).stdout == ""


@pytest.mark.parametrize(
    ("command", "env"),
    [
        (["relative/dsg-storage"], ENV),
        ([sys.executable, "x; rm -rf /"], ENV),
        (COMMAND, {**ENV, "DSG_STORAGE_QUEUE": "/tmp/a b"}),
        (COMMAND, {**ENV, "DSG_STORAGE_QUEUE": "/tmp/%h"}),
        (COMMAND, {"DSG_STORAGE_QUEUE": "/q"}),  # no allow-list: the hooks could change nothing
        (COMMAND, {**ENV, "DSG_STORAGE_QUEUE": "/q\n"}),  # "$" took a trailing newline: a new unit line
        (COMMAND, {**ENV, "DSG_STORAGE_QUEUE": "/q\nExecStartPre=/bin/sh"}),
    ],
)
def test_values_that_would_break_quoting_are_refused(command: list[str], env: dict[str, str]) -> None:
    with pytest.raises(InvalidArgumentError):
        render(command, env)


def test_carried_env_takes_only_our_settings() -> None:
    environ = {"DSG_STORAGE_QUEUE": "/q", "HOME": "/root", "DSG_STORAGE_LOCK_DIR": "", "PYTHONPATH": "/src"}
    assert carried_env(environ, "tank") == {
        "DSG_STORAGE_QUEUE": "/q",
        "PYTHONPATH": "/src",
        "DSG_STORAGE_ALLOW": "tank",
    }


def test_install_hooks_command_prints_or_installs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--allow", "tank/data", "install-hooks", "--print"]) == 0
    out = capsys.readouterr().out
    assert f"# ---- {ZEDLET}" in out and f"# ---- {SERVICE}" in out and "queue flush --pool" in out
    assert (
        main(
            [
                "--allow",
                "tank/data",
                "install-hooks",
                "--zedlet-dir",
                str(tmp_path / "zed.d"),
                "--systemd-dir",
                str(tmp_path / "sd"),
            ]
        )
        == 0
    )
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted([ZEDLET, SERVICE, TIMER])


def test_the_default_command_keeps_a_venv_python(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from dsg_storage import hooks

    venv_python = tmp_path / "venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.symlink_to(sys.executable)
    monkeypatch.setattr(hooks.shutil, "which", lambda name: None)
    monkeypatch.setattr(hooks.sys, "executable", str(venv_python))
    assert hooks.default_command() == [str(venv_python), "-m", "dsg_storage"]
