"""dsg_storage.testing where ZFS is missing: another project's tests fail, saying how to run them."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from dsg_storage.errors import UnsafePathError
from dsg_storage.testing import default_lock_dir, pool_access

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "tests" / "sample_project"


def run_sample_without_zfs(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "pytest", "-q", *args]
    if Path("/dev/zfs").exists():  # inside the VM: ZFS is there, but not for an unprivileged user
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(argv, cwd=SAMPLE, env=env, capture_output=True, text=True, check=False)


def test_the_sample_project_fails_loudly_without_zfs() -> None:
    result = run_sample_without_zfs()
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "2 errors" in out and "skipped" not in out  # an error at setup, before the test body
    assert "real-ZFS tests cannot run:" in out
    assert "dsg-storage-testpool run -- python3 -m pytest" in out


def test_the_plugin_stays_off_unless_asked_for() -> None:
    result = run_sample_without_zfs("-p", "no:dsg_storage.testing", "-o", "addopts=")
    out = result.stdout + result.stderr
    # Without the plugin the fixtures do not exist: pytest says so, instead of running anything.
    assert result.returncode == 1 and "fixture 'repository' not found" in out, out


# ----------------------------------------------------------------------- the pool's lock files
def test_lock_files_are_made_0600_in_a_directory_made_0700(tmp_path: Path) -> None:
    locks = tmp_path / "locks"
    with pool_access(exclusive=True, lock_dir=locks):
        assert stat.S_IMODE(locks.stat().st_mode) == 0o700
        for name in ("dsgtest-pool.lock", "dsgtest-pool.turnstile"):
            st = (locks / name).lstat()
            assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    with pool_access(exclusive=False, lock_dir=locks):  # and reused
        pass
    assert default_lock_dir() == Path(f"/tmp/dsgtest-locks-{os.geteuid()}")


def refused(lock_dir: Path, why: str) -> None:
    with pytest.raises(UnsafePathError, match=why), pool_access(exclusive=False, lock_dir=lock_dir):
        pytest.fail(f"the pool lock was taken in {lock_dir}")


def test_a_link_or_someone_elses_lock_file_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test changes owners: run it as root (as CI does)")
    locks = tmp_path / "locks"
    locks.mkdir(mode=0o700)
    target = tmp_path / "target"
    target.write_text("precious")
    (locks / "dsgtest-pool.lock").symlink_to(target)
    refused(locks, rf"lock file {locks}/dsgtest-pool.lock .*symbolic link.*rm {locks}/")
    assert target.read_text() == "precious" and target.stat().st_mode & 0o777 != 0o600
    (locks / "dsgtest-pool.lock").unlink()
    (locks / "dsgtest-pool.lock").write_text("")
    os.chown(locks / "dsgtest-pool.lock", 65534, 65534)
    refused(locks, "is not a regular file of ours")


def test_a_lock_directory_someone_else_can_change_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test changes owners: run it as root (as CI does)")
    refused(Path("/tmp"), r"lock directory is refused: /tmp is writable by others")
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    refused(theirs, "owned by uid 65534.*dsgtest_lock_dir")
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    refused(tmp_path / "link", "symbolic link")
    assert not (tmp_path / "elsewhere").exists()
