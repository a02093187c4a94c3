"""The harness itself: the dsgtest pool is real and each test gets its own datasets."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from dsg_storage.zfs.mounts import zfs_mounts

from .conftest import POOL, Sandbox


def test_dsgtest_pool_is_imported_and_file_backed() -> None:
    out = subprocess.run(
        ["zpool", "list", "-H", "-P", "-v", "-o", "name,health", POOL], capture_output=True, text=True, check=True
    ).stdout
    assert out.splitlines()[0].split("\t") == [POOL, "ONLINE"]
    vdevs = [line.split("\t")[1] for line in out.splitlines()[1:] if line.startswith("\t")]
    assert len(vdevs) == 1 and Path(vdevs[0]).is_file()


def test_lzc_round_trip_create_snapshot_clone_promote_rename(sandbox: Sandbox) -> None:
    zfs, base = sandbox.zfs, sandbox.dataset
    origin_mnt, clone_mnt = sandbox.mount_dir / "origin", sandbox.mount_dir / "clone"

    zfs.create(f"{base}/origin", {"mountpoint": str(origin_mnt)})
    zfs.host.mount(f"{base}/origin", str(origin_mnt))
    (origin_mnt / "hello.txt").write_text("v1")
    zfs.snapshot([f"{base}/origin@s1"], {"dsg-storage:note": "first"})
    zfs.clone(f"{base}/clone", f"{base}/origin@s1", {"mountpoint": str(clone_mnt)})
    zfs.host.mount(f"{base}/clone", str(clone_mnt))
    assert (clone_mnt / "hello.txt").read_text() == "v1"
    assert zfs.get_props(f"{base}/clone", ["origin"]) == {"origin": f"{base}/origin@s1"}

    zfs.promote(f"{base}/clone")
    # Promotion moves the snapshot to the clone and reverses the origin relation.
    assert [s.name for s in zfs.snapshots(f"{base}/clone")] == [f"{base}/clone@s1"]
    assert zfs.snapshots(f"{base}/clone")[0].user_props == {"dsg-storage:note": "first"}
    assert zfs.get_props(f"{base}/origin", ["origin"]) == {"origin": f"{base}/clone@s1"}
    assert "origin" not in (zfs.get_props(f"{base}/clone", ["origin"]) or {})

    zfs.host.unmount(f"{base}/clone")
    zfs.rename(f"{base}/clone", f"{base}/renamed")
    assert not zfs.exists(f"{base}/clone") and zfs.exists(f"{base}/renamed")
    # The local mountpoint property travels with the rename.
    assert zfs.get_props(f"{base}/renamed", ["mountpoint"]) == {"mountpoint": str(clone_mnt)}
    zfs.host.mount(f"{base}/renamed", str(clone_mnt))
    assert zfs_mounts()[f"{base}/renamed"] == [str(clone_mnt)]
    assert (clone_mnt / "hello.txt").read_text() == "v1"
    assert sandbox.datasets() == ["origin", "renamed", "renamed@s1"]


INNER = textwrap.dedent(
    """
    import os, subprocess
    import pytest

    @pytest.mark.parametrize("n", range(6))
    def test_same_names_in_every_worker(sandbox, n):
        name = f"{sandbox.dataset}/repo"  # the same leaf in every test and worker
        mnt = sandbox.mount_dir / "repo"
        sandbox.zfs.create(name, {"mountpoint": str(mnt)})
        sandbox.zfs.host.mount(name, str(mnt))
        (mnt / "who").write_text(os.environ["PYTEST_XDIST_WORKER"] + str(n))
        sandbox.zfs.snapshot([name + "@s"])
        assert (mnt / "who").read_text() == os.environ["PYTEST_XDIST_WORKER"] + str(n)
        with open(os.environ["DSG_WORKERS_SEEN"], "a") as f:
            f.write(os.environ["PYTEST_XDIST_WORKER"] + "\\n")
    """
)


def test_two_xdist_workers_do_not_collide(tmp_path: Path) -> None:
    tests_dir = Path(__file__).parent
    inner = tests_dir / f"test_inner_{tmp_path.name}.py"
    seen = tmp_path / "workers"
    inner.write_text(INNER)
    # The inner run gets its own pool-access locks. Sharing ours deadlocked: this test holds
    # a shared lock while it waits for the inner run, an outer test waiting for the
    # exclusive lock holds the turnstile, and the inner workers queued behind that
    # turnstile. Our shared lock already keeps every exclusive test out meanwhile.
    locks = tmp_path / "locks"
    locks.mkdir()
    try:
        result = subprocess.run(
            [
                *(sys.executable, "-m", "pytest", "-n", "2", "-p", "no:cacheprovider", "-q"),
                *("-o", f"dsgtest_lock_dir={locks}", str(inner)),
            ],
            capture_output=True,
            text=True,
            env={**__import__("os").environ, "DSG_WORKERS_SEEN": str(seen)},
            cwd=tests_dir.parent.parent,
            check=False,
        )
    finally:
        inner.unlink()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 passed" in result.stdout
    assert sorted(set(seen.read_text().split())) == ["gw0", "gw1"]
    # Each worker removed its datasets afterwards.
    leftovers = subprocess.run(
        ["zfs", "list", "-H", "-o", "name", "-r", POOL], capture_output=True, text=True, check=True
    ).stdout.split()
    assert not [n for n in leftovers if "test_same_names" in n]
