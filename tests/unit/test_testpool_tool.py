"""The VM runner's decisions, on the host: host tools, guest dependencies, the image key."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from dsg_storage.testpool import cli, deps, hosttools, pool, vm

DEBIAN = {"ID": "debian", "VERSION_ID": "12"}
UBUNTU = {"ID": "ubuntu", "ID_LIKE": "debian"}
FEDORA = {"ID": "fedora"}


def test_root_on_debian_or_ubuntu_installs_the_missing_tools_with_apt() -> None:
    for os_release in (DEBIAN, UBUNTU):
        decision = hosttools.plan(["qemu-system-x86_64", "mkfs.ext4"], os_release, euid=0, has_apt=True)
        assert decision == hosttools.Install(("qemu-system-x86", "e2fsprogs"))
        assert isinstance(decision, hosttools.Install)
        assert decision.commands()[0] == ["apt-get", "update", "-q"]
        assert decision.commands()[1][:2] == ["apt-get", "install"]
        assert decision.commands()[1][-2:] == ["qemu-system-x86", "e2fsprogs"]


def test_nothing_missing_means_nothing_to_do() -> None:
    assert hosttools.plan([], DEBIAN, euid=0, has_apt=True) is None


def test_elsewhere_the_message_is_the_exact_command() -> None:
    not_root = hosttools.plan(["debootstrap"], DEBIAN, euid=1000, has_apt=True)
    assert not_root == hosttools.Refuse(
        "missing host tools debootstrap: sudo apt-get install --no-install-recommends debootstrap"
    )
    fedora = hosttools.plan(list(hosttools.BUILD_TOOLS), FEDORA, euid=0, has_apt=False)
    assert isinstance(fedora, hosttools.Refuse)
    assert fedora.message.endswith(": dnf install qemu-system-x86-core debootstrap e2fsprogs")
    unknown = hosttools.plan(["qemu-system-x86_64"], {"ID": "plan9"}, euid=0, has_apt=False)
    assert isinstance(unknown, hosttools.Refuse) and "qemu-system-x86_64" in unknown.message


def test_os_release_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "os-release"
    path.write_text('PRETTY_NAME="Ubuntu 24.04 LTS"\nID=ubuntu\nID_LIKE=debian\n# comment\n\n')
    assert hosttools.read_os_release(path) == {"PRETTY_NAME": "Ubuntu 24.04 LTS", "ID": "ubuntu", "ID_LIKE": "debian"}
    assert hosttools.read_os_release(tmp_path / "missing") == {}


def test_guest_dependencies_are_binary_wheels_for_the_guest_python(tmp_path: Path) -> None:
    argv = deps.pip_argv("python3", tmp_path / "t", [Path("req.txt")])
    assert argv[:4] == ["python3", "-m", "pip", "install"]
    assert ["--target", str(tmp_path / "t")] == argv[argv.index("--target") : argv.index("--target") + 2]
    assert "--only-binary=:all:" in argv
    assert argv[argv.index("--python-version") + 1] == "3.13"
    assert argv[argv.index("--abi") + 1] == "cp313"
    assert argv[argv.index("--platform") + 1] == "manylinux2014_x86_64"
    assert argv[-2:] == ["-r", "req.txt"]
    assert "--platform" not in deps.pip_argv("python3", tmp_path, [], guest=False)


def test_the_dependency_cache_follows_the_requirements(tmp_path: Path) -> None:
    req = tmp_path / "requirements.txt"
    req.write_text("attrs\n")
    first = deps.cache_key([req])
    assert deps.cache_key([req]) == first and deps.cache_key([req], guest=False) != first
    req.write_text("attrs==23.1\n")
    assert deps.cache_key([req]) != first


def test_a_failed_fetch_leaves_no_directory(tmp_path: Path) -> None:
    req = tmp_path / "requirements.txt"
    req.write_text("surely-no-such-package-exists-here==0\n")
    failing = tmp_path / "python"
    failing.write_text("#!/bin/sh\nexit 1\n")
    failing.chmod(0o755)
    with pytest.raises(deps.DepsError, match="could not fetch"):
        deps.ensure([req], tmp_path / "cache", python=str(failing))
    assert list((tmp_path / "cache" / "deps").iterdir()) == []
    with pytest.raises(deps.DepsError, match="does not exist"):
        deps.ensure([tmp_path / "nope.txt"], tmp_path / "cache")


def test_the_image_key_is_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    """The image's key is pinned: a change to its inputs (which rebuilds every cached image)
    is deliberate, and updates this value with it."""
    monkeypatch.delenv("DSG_VM_SUITE", raising=False)
    assert vm.image_key() == "c258b07d8a704aab"  # sanoid added (#25)


def test_the_guest_mounts_the_checkout_and_puts_its_src_first() -> None:
    script = vm._guest_main(Path("/home/u/proj"), "python3 -m pytest", deps=True)
    assert "checkout /home/u/proj || exit 125" in script
    # the guest caches what it reads of the checkout: imports without a 9p round trip each
    assert all("cache=loose" in line for line in script.splitlines() if "mount -t 9p" in line)
    assert "deps /run/dsg-deps" in script
    assert "PYTHONPATH=/home/u/proj/src:/run/dsg-deps:/ctl/pylib" in script
    assert "deps /run/dsg-deps" not in vm._guest_main(Path("/p"), "true", deps=False)


def test_local_without_zfs_is_a_setup_failure(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "local_zfs_usable", lambda: False)
    assert cli.main(["run", "--local", "--", "true"]) == cli.EXIT_SETUP
    assert "--local needs /dev/zfs and root" in capsys.readouterr().err


def test_the_wrapper_loads_the_tool_without_dsg_storage_init() -> None:
    """testpool/run must work with a bare python3 (no attrs, no tenacity yet)."""
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-I", str(root / "testpool" / "run"), "--tool", "path"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(vm.image_dir())
    assert "dsg_storage" not in result.stderr


def test_ensure_installs_with_apt_and_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    installed: set[str] = set()
    ran: list[list[str]] = []

    def which(tool: str) -> str | None:
        return f"/usr/bin/{tool}" if tool in installed or tool == "apt-get" else None

    def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        ran.append(argv)
        if argv[1] == "install":
            installed.update({"qemu-system-x86_64", "debootstrap", "mkfs.ext4"})
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(hosttools.shutil, "which", which)
    monkeypatch.setattr(hosttools.subprocess, "run", run)
    monkeypatch.setattr(hosttools, "read_os_release", lambda: DEBIAN)
    monkeypatch.setattr(hosttools.os, "geteuid", lambda: 0)
    hosttools.ensure(hosttools.BUILD_TOOLS)
    assert [argv[:2] for argv in ran] == [["apt-get", "update"], ["apt-get", "install"]]
    assert ran[1][-3:] == ["qemu-system-x86", "debootstrap", "e2fsprogs"]
    assert "installing the host tools the VM needs: apt-get install qemu-system-x86" in capsys.readouterr().err
    ran.clear()
    hosttools.ensure(hosttools.BUILD_TOOLS)  # all there now: nothing runs
    assert ran == []


def test_ensure_elsewhere_raises_with_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hosttools.shutil, "which", lambda tool: None)
    monkeypatch.setattr(hosttools, "read_os_release", lambda: FEDORA)
    with pytest.raises(hosttools.HostToolsError, match="dnf install qemu-system-x86-core"):
        hosttools.ensure(hosttools.BOOT_TOOLS)


def test_the_pool_command_refuses_other_pools(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["pool", "create", "--pool", "tank"]) == 2
    assert "only manages the 'dsgtest' pool" in capsys.readouterr().err
    assert cli.main(["path"]) == 0
    assert capsys.readouterr().out.strip() == str(vm.image_dir())


# ----------------------------------------------------------------------- the VM's watchdog
def test_a_run_that_keeps_printing_is_never_killed_for_its_length() -> None:
    dog = vm.Watchdog(silence=600, overall=None, started=0.0)
    for now in range(0, 10_000, 500):  # output every 500 s, far past the old 1,800 s limit
        assert dog.expired(float(now)) is None
        dog.heard(float(now))
    assert dog.wait(9_600.0) == 500.0  # the next moment a limit could fire: 600 s after the last output
    assert dog.expired(9_500.0 + 599) is None
    assert dog.expired(9_500.0 + 600) == "the VM printed nothing for 600s (--silence-timeout) and was killed"


def test_the_overall_limit_fires_whatever_the_output_and_says_so() -> None:
    dog = vm.Watchdog(silence=600, overall=3600, started=100.0)
    for now in range(100, 3700, 100):
        dog.heard(float(now))
    assert dog.expired(3_699.0) is None and dog.wait(3_650.0) == 50.0
    assert dog.expired(3_700.0) == "the VM ran past its overall limit of 3600s (--timeout) and was killed"


def test_without_limits_nothing_fires() -> None:
    dog = vm.Watchdog(silence=None, overall=None, started=0.0)
    assert dog.expired(1e9) is None and dog.wait(1e9) is None


def talker(code: str) -> subprocess.Popen[bytes]:
    """A child standing in for qemu: its output is the console."""
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_the_console_is_copied_until_qemu_exits() -> None:
    child = talker("import sys; sys.stdout.write('boot\\r\\nran\\r\\n')")
    out = io.BytesIO()
    vm._stream(child, vm.Watchdog(silence=600, overall=None, started=0.0), clock=lambda: 0.0, out=out, poll=0.01)
    assert out.getvalue() == b"boot\nran\n" and child.returncode == 0


@pytest.mark.parametrize(
    ("silence", "overall", "fired"),
    [(600.0, None, "printed nothing for 600s"), (600.0, 300.0, "overall limit of 300s")],
)
def test_a_silent_guest_or_one_past_the_overall_limit_is_reported(
    silence: float, overall: float | None, fired: str
) -> None:
    child = talker("import os, time; os.write(1, b'booted\\n'); time.sleep(60)")
    out = io.BytesIO()
    # Time stands still until the guest spoke, then leaps 1,000 s: it then stays silent.
    clock = lambda: 1_000.0 if out.getvalue() else 0.0
    try:
        with pytest.raises(vm.VMTimeout, match=fired):
            vm._stream(
                child, vm.Watchdog(silence=silence, overall=overall, started=0.0), clock=clock, out=out, poll=0.01
            )
    finally:
        child.kill()
        child.wait()
    assert out.getvalue() == b"booted\n"


def test_a_guest_that_stopped_before_the_command_started_is_booted_again(tmp_path: Path) -> None:
    # Nothing in the control share: the guest died while booting (a panic under TCG).
    assert vm.command_exit_code(tmp_path, qemu_rc=0) is None
    (tmp_path / vm.STARTED).touch()
    with pytest.raises(vm.VMError, match="without reporting the command's exit code"):
        vm.command_exit_code(tmp_path, qemu_rc=0)  # the command may have run: never again
    (tmp_path / "rc").write_text("3\n")
    assert vm.command_exit_code(tmp_path, qemu_rc=0) == 3
    (tmp_path / "rc").write_text("oops\n")
    with pytest.raises(vm.VMError, match="'oops'"):
        vm.command_exit_code(tmp_path, qemu_rc=0)


def test_a_setup_failure_in_the_guest_is_its_exit_code_not_a_second_boot(tmp_path: Path) -> None:
    (tmp_path / "rc").write_text("125\n")  # main.sh could not mount the checkout: before "started"
    assert vm.command_exit_code(tmp_path, qemu_rc=0) == 125


def test_the_guest_marks_the_start_of_the_command_after_its_set_up() -> None:
    script = vm._guest_main(Path("/work/x"), "true", deps=False)
    mark, command = script.index(f": > /ctl/{vm.STARTED}"), script.index("exec /bin/sh -c")
    assert script.index("modprobe zfs") < script.index("cd /work/x") < mark < command


def test_the_limits_on_the_command_line() -> None:
    run = cli.build_parser().parse_args(["run", "--", "true"])
    assert (run.silence_timeout, run.timeout) == (vm.DEFAULT_SILENCE_TIMEOUT, None)
    run = cli.build_parser().parse_args(["run", "--silence-timeout", "120", "--timeout", "7200", "--", "true"])
    assert (run.silence_timeout, run.timeout) == (120.0, 7200.0)
    run = cli.build_parser().parse_args(["run", "--silence-timeout", "none", "--timeout", "0", "--", "true"])
    assert (run.silence_timeout, run.timeout) == (None, None)
    for bad in ("-5", "soon", "inf", "nan"):
        with pytest.raises(SystemExit):
            cli.build_parser().parse_args(["run", "--timeout", bad, "--", "true"])


def test_a_timeout_is_exit_124_naming_the_limit(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def hung(*args: object, **kwargs: object) -> int:
        raise vm.VMTimeout("the VM printed nothing for 600s (--silence-timeout) and was killed (qemu pid 1)")

    monkeypatch.setattr(cli, "local_zfs_usable", lambda: False)
    monkeypatch.setattr(vm, "ensure_image", lambda: Path("/nonexistent"))
    monkeypatch.setattr(vm, "run", hung)
    assert cli.main(["run", "--vm", "--", "true"]) == cli.EXIT_TIMEOUT == 124
    assert "printed nothing for 600s (--silence-timeout)" in capsys.readouterr().err


def test_a_pool_disk_becomes_the_directory_of_the_pools_file() -> None:
    script = vm._guest_main(Path("/p"), "true", deps=False, pool_disk=True)
    setup = next(line for line in script.splitlines() if "mkfs.ext4" in line)
    assert setup == (
        "mkfs.ext4 -q -F /dev/vdb && mkdir -p /var/lib/dsg-storage-testpool && "
        "mount /dev/vdb /var/lib/dsg-storage-testpool && chmod 0700 /var/lib/dsg-storage-testpool || exit 125"
    )
    # before the command can start, and where the pool tool keeps its file
    assert script.index(setup) < script.index("/ctl/started")
    assert str(Path(pool.DEFAULT_FILE).parent) == vm.GUEST_POOL_DIR
    assert "mkfs" not in vm._guest_main(Path("/p"), "true", deps=False)
    # the disk holds a pool file of the size asked, ext4's own blocks beside it
    assert vm.pool_disk_bytes(16 << 30) >= (16 << 30) * 1.06


@pytest.mark.parametrize("size", ["", "12X", "1M", "-3G", "G"])
def test_a_bad_pool_size_is_refused_before_anything_boots(
    size: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boot(*_args: object, **_kwargs: object) -> int:
        raise AssertionError("booted")

    monkeypatch.setattr(vm, "run", boot)
    monkeypatch.setattr(vm, "ensure_image", boot)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "--vm", "--pool-size", size, "--", "true"])
    assert exit_info.value.code == 2
    assert "--pool-size" in capsys.readouterr().err


def test_the_pool_size_reaches_the_pool_tool_and_the_vms_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    booted: dict[str, object] = {}

    def run(line: str, **kwargs: object) -> int:
        booted.update(kwargs, line=line)
        return 0

    monkeypatch.setattr(vm, "ensure_image", lambda: Path("/nonexistent"))
    monkeypatch.setattr(vm, "run", run)
    assert cli.main(["run", "--vm", "--pool-size", "8G", "--", "true"]) == 0
    assert str(booted["line"]).startswith("python3 -m dsg_storage.testpool.pool create --size 8G >&2")
    assert booted["machine"] == vm.Machine(pool_disk=vm.pool_disk_bytes(8 << 30))
    assert cli.main(["run", "--vm", "--", "true"]) == 0
    assert booted["machine"] == vm.Machine()
    assert str(booted["line"]).startswith("python3 -m dsg_storage.testpool.pool create >&2")


@pytest.fixture
def stand_in_qemu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[list[str]], None]], None]:
    """``vm.run`` with the image cache in ``tmp_path / "cache"`` and qemu stood in for:
    the function returned takes ``watch``, called with qemu's argv while the "VM" runs;
    the command then reports exit 0."""
    monkeypatch.setenv("DSG_VM_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    monkeypatch.setattr(vm, "ensure_image", lambda: tmp_path / "image")
    monkeypatch.setattr(hosttools, "ensure", lambda _tools: None)
    monkeypatch.setattr(vm.shutil, "which", lambda _name: "/usr/bin/qemu-system-x86_64")

    def install(watch: Callable[[list[str]], None]) -> None:
        def boot(argv: list[str], _watchdog: vm.Watchdog) -> int:
            watch(argv)
            ctl = Path(next(a for a in argv if "mount_tag=ctl" in a).split(",")[1].removeprefix("path="))
            (ctl / "rc").write_text("0\n")
            return 0

        monkeypatch.setattr(vm, "_boot", boot)

    return install


def test_the_pool_disk_is_a_sparse_file_beside_the_image_cache_and_gone_after_the_run(
    tmp_path: Path, stand_in_qemu: Callable[[Callable[[list[str]], None]], None]
) -> None:
    seen: dict[str, object] = {}

    def watch(argv: list[str]) -> None:
        drives = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-drive"]
        disk = Path(drives[1].split(",")[0].removeprefix("file="))
        seen.update(drives=drives, disk=disk, size=disk.stat().st_size, blocks=disk.stat().st_blocks)

    stand_in_qemu(watch)
    machine = vm.Machine(pool_disk=vm.pool_disk_bytes(8 << 30))
    assert vm.run("true", checkout=tmp_path, machine=machine) == 0
    disk = seen["disk"]
    assert isinstance(disk, Path) and disk.parent.parent == tmp_path / "cache"
    assert seen["size"] == machine.pool_disk and seen["blocks"] == 0  # sparse: nothing written yet
    assert not disk.parent.exists()
    assert len(seen["drives"]) == 2 and "snapshot=on" not in seen["drives"][1]  # type: ignore[arg-type]


def test_a_terminated_runner_unwinds_and_cleans_up(tmp_path: Path) -> None:
    child = (
        "import os, signal, tempfile\n"
        "from dsg_storage.testpool import cli\n"
        "cli.exit_on_sigterm()\n"
        f"with tempfile.TemporaryDirectory(dir={str(tmp_path)!r}):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    print('not reached')\n"
    )
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=False)
    assert done.returncode == 143, done.stderr
    assert "not reached" not in done.stdout
    assert list(tmp_path.iterdir()) == []  # the temporary directory was removed


def test_without_a_pool_disk_nothing_is_made_beside_the_cache(
    tmp_path: Path, stand_in_qemu: Callable[[Callable[[list[str]], None]], None]
) -> None:
    seen: dict[str, object] = {}
    stand_in_qemu(
        lambda argv: seen.update(
            drives=[a for a in argv if a.startswith("file=")], cache=sorted((tmp_path / "cache").iterdir())
        )
    )
    assert vm.run("true", checkout=tmp_path) == 0
    assert seen["cache"] == [] and len(seen["drives"]) == 1  # type: ignore[arg-type]
