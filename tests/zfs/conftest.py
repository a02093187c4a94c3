"""Fixtures for tests that need real ZFS: the ``dsgtest`` pool, one sandbox per test.

These tests never skip. Where ZFS is missing they fail, saying how to run them
(``testpool/run python3 -m pytest`` brings a VM with real ZFS on any Linux machine).
"""

from __future__ import annotations

import fcntl
import itertools
import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs
import pytest

from dsg_storage import AllowList
from dsg_storage.zfs.boundary import Zfs
from dsg_storage.zfs.mounts import zfs_mounts

POOL = "dsgtest"
_counter = itertools.count()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.zfs)


def _zfs_problem() -> str | None:
    if os.geteuid() != 0:
        return "they must run as root"
    if not Path("/dev/zfs").exists():
        return "/dev/zfs is missing (no ZFS kernel module on this machine)"
    result = subprocess.run(["zpool", "list", "-H", "-o", "name", POOL], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return f"the {POOL} pool is not imported ({result.stderr.strip()})"
    try:
        import libzfs_core  # noqa: F401
    except ImportError as exc:
        return f"libzfs_core cannot be imported ({exc}); apt-get install python3-pyzfs"
    return None


# Tests share the pool; a test that exports it (a simulated reboot) needs it alone. A
# readers-writer lock across xdist workers (flock; the turnstile keeps a waiting writer
# from starving behind a stream of readers).
_LOCKS = Path(os.environ.get("DSG_TEST_LOCK_DIR", "/tmp"))


@contextmanager
def pool_access(exclusive: bool) -> Iterator[None]:
    turnstile = os.open(_LOCKS / "dsgtest-pool.turnstile", os.O_CREAT | os.O_RDWR, 0o600)
    lock = os.open(_LOCKS / "dsgtest-pool.lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        if not exclusive:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        yield
    finally:
        os.close(lock)
        os.close(turnstile)


@pytest.fixture(autouse=True)
def _shared_pool(request: pytest.FixtureRequest) -> Iterator[None]:
    if "exclusive_pool" in request.fixturenames:
        yield
        return
    with pool_access(exclusive=False):
        yield


@pytest.fixture
def exclusive_pool() -> Iterator[None]:
    """The test may export and import dsgtest: no other test runs meanwhile."""
    with pool_access(exclusive=True):
        yield


@pytest.fixture(scope="session")
def worker_root(worker_id: str, testrun_uid: str) -> Iterator[str]:
    """``dsgtest/<run>-<xdist worker>``: every dataset a worker makes lives below it.

    The run id keeps a pytest started from inside a test (or a second suite on the same
    host) from touching this run's datasets.
    """
    problem = _zfs_problem()
    if problem:
        pytest.fail(
            f"real-ZFS tests cannot run: {problem}. Run the suite with 'testpool/run python3 -m pytest', "
            "which creates the dsgtest pool (inside a VM when this machine has no ZFS).",
            pytrace=False,
        )
    root = f"{POOL}/{testrun_uid[:8]}-{worker_id}"
    with pool_access(exclusive=False):
        subprocess.run(["zfs", "create", "-o", "mountpoint=none", root], check=True)
    yield root
    with pool_access(exclusive=False):
        _destroy_tree(root)


def _destroy_tree(dataset: str) -> None:
    if subprocess.run(["zfs", "list", "-H", dataset], capture_output=True, check=False).returncode == 0:
        subprocess.run(["zfs", "destroy", "-r", "-f", dataset], check=True)


@attrs.frozen
class Sandbox:
    """A test's own corner of the pool: a parent dataset and a directory for mount paths."""

    dataset: str  # repositories go below it: f"{sandbox.dataset}/repo"
    mount_dir: Path
    allow: AllowList
    zfs: Zfs

    def datasets(self) -> list[str]:
        """Every dataset and snapshot below the sandbox (names relative to it), sorted."""
        out = subprocess.run(
            ["zfs", "list", "-H", "-r", "-t", "all", "-o", "name", self.dataset],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        return sorted(n[len(self.dataset) + 1 :] for n in out if n != self.dataset)

    def mounts(self) -> dict[str, list[str]]:
        return {k: v for k, v in zfs_mounts().items() if k.startswith(self.dataset + "/")}


@pytest.fixture
def sandbox(worker_root: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Sandbox]:
    leaf = re.sub(r"[^A-Za-z0-9_-]", "-", request.node.name)[:60] + f"-{next(_counter)}"
    dataset = f"{worker_root}/{leaf}"
    subprocess.run(["zfs", "create", "-o", "mountpoint=none", dataset], check=True)
    allow = AllowList((dataset,))
    box = Sandbox(dataset=dataset, mount_dir=tmp_path, allow=allow, zfs=Zfs(allow))
    yield box
    _destroy_tree(dataset)
