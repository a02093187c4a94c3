"""The zedlet and systemd units: their contents, checked field by field, and by
systemd-analyze where this machine has it (the field checks run everywhere); and what
install refuses to bake into them: a command or PYTHONPATH entry someone else could change.

Installing checks that only root can change this Python (``sys.executable``): true in the
VM and in CI, which run as root; elsewhere those tests are skipped."""

from __future__ import annotations

import configparser
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from dsg_storage import InvalidArgumentError, hostfs
from dsg_storage.cli.commands import EXIT_NOT_ALLOWED, main
from dsg_storage.errors import UnsafePathError
from dsg_storage.hooks import SERVICE, TIMER, ZEDLET, carried_env, install, render

COMMAND = [sys.executable, "-m", "dsg_storage"]
ENV = {"DSG_STORAGE_ALLOW": "tank/data", "DSG_STORAGE_QUEUE": "/var/lib/dsg-storage/queue.sqlite"}
NOBODY = 65534


def _roots_alone(path: str) -> bool:
    try:
        hostfs.check_root_only(path)
    except (UnsafePathError, FileNotFoundError):
        return False
    return True


installs = pytest.mark.skipif(
    os.geteuid() != 0 or not _roots_alone(sys.executable),
    reason="install refuses a Python others can change; root-owned paths need root",
)


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


@installs
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


@installs
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


@installs
def test_install_hooks_command_prints_or_installs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PYTHONPATH", raising=False)  # this test's command: this Python, nothing else
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


@pytest.fixture
def root_tree(tmp_path: Path) -> Path:
    """tmp/lib (root's, 0755), tmp/theirs (a user's), tmp/shared (0777), tmp/via -> lib."""
    for name in ("lib", "theirs", "shared"):
        (tmp_path / name).mkdir(mode=0o755)
    os.chown(tmp_path / "theirs", NOBODY, NOBODY)
    (tmp_path / "shared").chmod(0o777)
    (tmp_path / "via").symlink_to(tmp_path / "lib")
    return tmp_path


@installs
@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ("theirs", "owned by uid 65534"),
        ("theirs/pkg", "owned by uid 65534"),
        ("shared", "writable by others"),
        ("via/pkg", "symbolic link"),  # a link as the last component is followed, and checked
        ("missing", "does not exist"),
    ],
)
def test_install_refuses_a_pythonpath_entry_root_alone_cannot_keep(root_tree: Path, entry: str, why: str) -> None:
    (root_tree / "theirs" / "pkg").mkdir()
    (root_tree / "lib" / "pkg").mkdir()
    pythonpath = f"{root_tree / 'lib'}:{root_tree / entry}"
    zed, units = root_tree / "lib" / "zed.d", root_tree / "lib" / "systemd"
    with pytest.raises(UnsafePathError, match=why) as caught:
        install(render(COMMAND, {**ENV, "PYTHONPATH": pythonpath}), zedlet_dir=str(zed), systemd_dir=str(units))
    assert str(root_tree / entry) in str(caught.value) and "nothing was installed" in str(caught.value)
    assert not zed.exists() and not units.exists()
    written = install(
        render(COMMAND, {**ENV, "PYTHONPATH": str(root_tree / "lib")}), zedlet_dir=str(zed), systemd_dir=None
    )
    assert written == [str(zed / ZEDLET)]
    assert f"export PYTHONPATH={root_tree / 'lib'}\n" in (zed / ZEDLET).read_text()


@installs
def test_install_refuses_a_command_or_its_interpreter_someone_else_could_change(root_tree: Path) -> None:
    zed = root_tree / "lib" / "zed.d"
    theirs = root_tree / "theirs" / "dsg-storage"
    theirs.write_text("#!/bin/true\n")
    with pytest.raises(UnsafePathError, match="owned by uid 65534"):
        install(render([str(theirs)], ENV), zedlet_dir=str(zed), systemd_dir=None)
    # a root script in a root directory, whose #! interpreter is a user's
    script = root_tree / "lib" / "dsg-storage"
    script.write_text(f"#!{root_tree / 'shared' / 'python'} -m dsg_storage\n")
    script.chmod(0o755)
    (root_tree / "shared" / "python").write_text("")
    with pytest.raises(UnsafePathError, match="writable by others"):
        install(render([str(script)], ENV), zedlet_dir=str(zed), systemd_dir=None)
    # a script an argument names, not only the first word
    with pytest.raises(UnsafePathError, match="owned by uid 65534"):
        install(render([sys.executable, str(theirs)], ENV), zedlet_dir=str(zed), systemd_dir=None)
    assert not zed.exists()
    script.write_text(f"#!{sys.executable}\n")  # this Python: root's alone (see `installs`)
    assert install(render([str(script)], ENV), zedlet_dir=str(zed), systemd_dir=None) == [str(zed / ZEDLET)]


@installs
def test_install_hooks_command_refuses_a_user_writable_pythonpath(
    root_tree: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(root_tree / "shared"))
    zed = root_tree / "lib" / "zed.d"
    argv = ["--allow", "tank/data", "install-hooks", "--command", f"{sys.executable} -m dsg_storage"]
    assert main([*argv, "--zedlet-dir", str(zed)]) == EXIT_NOT_ALLOWED
    err = capsys.readouterr().err
    assert err.startswith("dsg-storage: ") and str(root_tree / "shared") in err and "writable by others" in err
    assert not zed.exists()
    assert main([*argv, "--print"]) == 0  # looking first is still possible
    assert f"export PYTHONPATH={root_tree / 'shared'}" in capsys.readouterr().out
