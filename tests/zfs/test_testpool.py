"""The dsgtest pool tool (dsg_storage.testpool.pool) on real ZFS: idempotent, and it refuses what is not its own."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

POOL_TOOL = ("-m", "dsg_storage.testpool.pool")


def pool(*args: str, user: int | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, *POOL_TOOL, *args]
    if user is not None:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def test_create_is_idempotent_on_the_running_pool(worker_root: str) -> None:
    again = pool("create")
    assert again.returncode == 0, again.stderr
    assert "already exists" in again.stdout
    assert (
        "ONLINE"
        in subprocess.run(["zpool", "list", "-H", "dsgtest"], capture_output=True, text=True, check=True).stdout
    )


def test_any_other_pool_name_is_refused(worker_root: str) -> None:
    for action in ("create", "destroy"):
        result = pool(action, "--pool", "tank")
        assert result.returncode == 2 and "only manages the 'dsgtest' pool" in result.stderr


def test_a_file_that_is_not_ours_is_never_overwritten_or_deleted(worker_root: str, tmp_path: Path) -> None:
    foreign = tmp_path / "precious.img"
    foreign.write_bytes(b"somebody's data" * 1000)
    digest = hashlib.sha256(foreign.read_bytes()).hexdigest()
    for action in ("create", "destroy"):
        result = pool(action, "--file", str(foreign))
        assert result.returncode == 2 and "does not hold a dsgtest pool" in result.stderr
    assert hashlib.sha256(foreign.read_bytes()).hexdigest() == digest


def test_not_root_is_a_clear_error(worker_root: str) -> None:
    result = pool("status", user=65534)
    assert result.returncode == 2 and "needs root" in result.stderr


def test_bad_sizes_are_refused(worker_root: str, tmp_path: Path) -> None:
    for size in ("lots", "1M"):
        result = pool("create", "--file", str(tmp_path / "new.img"), "--size", size)
        assert result.returncode == 2 and "size" in result.stderr
    assert not (tmp_path / "new.img").exists()
