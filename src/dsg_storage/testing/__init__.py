"""A pytest plugin for tests against real ZFS: the ``dsgtest`` pool, a sandbox per test.

Load it with ``-p dsg_storage.testing`` (or ``pytest_plugins = ["dsg_storage.testing"]``
in the top-level conftest.py, or, with dsg-storage installed, ``--dsg-storage-zfs`` /
``dsg_storage_zfs = true``). Run the tests with ``dsg-storage-testpool run -- python3 -m
pytest``, which creates the pool first (inside a qemu VM where this machine has no ZFS).

Fixtures:

* ``dsgtest_pool`` (session): the pool and this worker's root dataset
  ``dsgtest/<run>-<xdist worker>``, destroyed (with all below it) at the end.
* ``zfs_sandbox``: a dataset of the test's own below that root, with a temporary
  directory for mount paths; destroyed, recursively, after the test.
* ``repository``: a factory of ``Repository`` objects confined to the sandbox (their
  allow-list is the sandbox dataset); ``repository.mountpoint(leaf)`` is a path under the
  sandbox's temporary directory.
* ``dsgtest_exclusive``: the test may export or import the pool; no other test that uses
  the pool runs meanwhile (a readers-writer lock across xdist workers, whose files live
  in the ``dsgtest_lock_dir`` ini option's directory, by default
  ``/tmp/dsgtest-locks-<uid>``: one only the current user can change, see ``pool_access``).

Tests marked ``zfs`` or using these fixtures **fail, never skip**, where ZFS is missing,
naming the reason and the command that brings ZFS. After a crashed run, datasets of that
run remain under ``dsgtest/``; the pool is a throwaway (``dsg-storage-testpool pool
destroy``).
"""

from __future__ import annotations

import fcntl
import itertools
import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest

from .. import hostfs
from ..core.repository import Repository
from ..errors import UnsafePathError, ZfsUnavailableError
from ..zfs.allow import AllowList
from ..zfs.boundary import Zfs, load_libzfs_core, open_zfs
from ..zfs.mounts import zfs_mounts

POOL = "dsgtest"
HOW_TO_RUN = (
    "run the tests with 'dsg-storage-testpool run -- python3 -m pytest' from the project's root "
    "(pip install 'dsg-storage[test]'; in a dsg-storage checkout './testpool/run python3 -m pytest'): "
    "it creates the dsgtest pool, inside a qemu VM when this machine has no ZFS"
)
FIXTURES = ("dsgtest_pool", "zfs_sandbox", "repository", "dsgtest_exclusive")
_PROBLEM = pytest.StashKey[str | None]()
_RUN_ID = pytest.StashKey[str]()
_counter = itertools.count()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "dsgtest_lock_dir",
        default="",
        help="directory of the dsgtest pool's readers-writer lock files (shared by all workers of a run; "
        "only the current user may be able to change it); default /tmp/dsgtest-locks-<uid>",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "zfs: needs the real dsgtest ZFS pool; fails, never skips, where it is missing")


def zfs_problem() -> str | None:
    """Why real-ZFS tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "they must run as root"
    if not Path("/dev/zfs").exists():
        return "/dev/zfs is missing (no ZFS kernel module on this machine)"
    try:
        result = subprocess.run(
            ["zpool", "list", "-H", "-o", "name", POOL], capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        return "the zpool command is missing (ZFS is not installed)"
    if result.returncode != 0:
        return f"the {POOL} pool is not imported ({result.stderr.strip()})"
    try:
        load_libzfs_core()
    except ZfsUnavailableError as exc:
        return str(exc)
    return None


def _require_zfs(config: pytest.Config) -> None:
    if _PROBLEM not in config.stash:
        # Asked once per worker and kept, so asked holding the pool shared: a test that has
        # it alone may have exported it for a moment (a worker that ran only unit tests
        # so far asks first in the middle of the run).
        with pool_access(exclusive=False, lock_dir=_lock_dir(config)):
            config.stash[_PROBLEM] = zfs_problem()
    problem = config.stash[_PROBLEM]
    if problem:
        pytest.fail(f"real-ZFS tests cannot run: {problem}; {HOW_TO_RUN}.", pytrace=False)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("zfs") is not None:
        _require_zfs(item.config)


# ----------------------------------------------------------------------- the pool lock
def default_lock_dir() -> Path:
    """Where the pool's lock files live unless ``dsgtest_lock_dir`` says otherwise: one
    directory per user, shared by every run of theirs on this host."""
    return Path(f"/tmp/dsgtest-locks-{os.geteuid()}")


def _open_lock(dirfd: int, directory: str, name: str) -> int:
    """Lock file ``name`` of the checked ``directory``: created ``O_EXCL|O_NOFOLLOW|O_CLOEXEC``
    0600, or an existing one of ours with one link; a link or someone else's file is refused."""
    try:
        return hostfs.private_file(dirfd, name)
    except UnsafePathError as exc:
        raise UnsafePathError(
            f"lock file {directory}/{name} of the {POOL} pool is refused: {exc.message}",
            hint=f"remove it (rm {directory}/{name}) if no test run is using it",
        ) from None


@contextmanager
def pool_access(exclusive: bool, lock_dir: Path | None = None) -> Iterator[None]:
    """Share the pool (``exclusive=False``) or have it alone, across processes.

    A readers-writer lock (flock); the turnstile keeps a waiting writer from starving
    behind a stream of readers. Released when the process dies, however it dies.

    The lock files live in ``lock_dir`` (default ``default_lock_dir()``), a directory
    ``hostfs.private_dir`` checks (created 0700 if missing, reached without links, every
    directory above it root's or ours and writable by nobody else, it itself ours and not
    writable by others: ``/tmp`` itself is refused), and are opened without following a
    link (``hostfs.private_file``). Otherwise UnsafePathError, naming what to remove.
    """
    directory = str(lock_dir if lock_dir is not None else default_lock_dir())
    try:
        dirfd = hostfs.private_dir(directory, narrow=False)
    except UnsafePathError as exc:
        raise UnsafePathError(
            f"the {POOL} pool's lock directory is refused: {exc.message}",
            hint="remove it if it is not yours, or name a directory only you can change with the "
            "dsgtest_lock_dir ini option",
        ) from None
    try:
        turnstile = _open_lock(dirfd, directory, "dsgtest-pool.turnstile")
        try:
            lock = _open_lock(dirfd, directory, "dsgtest-pool.lock")
        except BaseException:
            os.close(turnstile)
            raise
    finally:
        os.close(dirfd)
    try:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        if not exclusive:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        yield
    finally:
        os.close(lock)
        os.close(turnstile)


def _lock_dir(config: pytest.Config) -> Path | None:
    configured = str(config.getini("dsgtest_lock_dir"))
    return Path(configured) if configured else None


@pytest.fixture(autouse=True)
def _dsgtest_shared_access(request: pytest.FixtureRequest) -> Iterator[None]:
    """Tests that use the pool hold it shared, unless they asked to have it alone."""
    names = request.fixturenames
    uses_pool = request.node.get_closest_marker("zfs") is not None or any(f in names for f in FIXTURES)
    if not uses_pool or "dsgtest_exclusive" in names:
        yield
        return
    with pool_access(exclusive=False, lock_dir=_lock_dir(request.config)):
        yield


@pytest.fixture
def dsgtest_exclusive(request: pytest.FixtureRequest) -> Iterator[None]:
    """The test may export and import dsgtest: no other test using the pool runs meanwhile."""
    _require_zfs(request.config)
    with pool_access(exclusive=True, lock_dir=_lock_dir(request.config)):
        yield


# ----------------------------------------------------------------------- datasets
def _destroy_tree(dataset: str) -> None:
    if subprocess.run(["zfs", "list", "-H", dataset], capture_output=True, check=False).returncode == 0:
        subprocess.run(["zfs", "destroy", "-r", "-f", dataset], check=True)


@attrs.frozen
class TestPool:
    """The dsgtest pool as this worker sees it: every dataset it makes lives below ``root``."""

    __test__ = False  # not a test class, whatever its name

    name: str
    root: str


def _run_id(config: pytest.Config) -> str:
    """The same id in every xdist worker of one run, and a new one for every run."""
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    if workerinput and "testrunuid" in workerinput:
        return str(workerinput["testrunuid"])
    if _RUN_ID not in config.stash:
        config.stash[_RUN_ID] = uuid.uuid4().hex
    return config.stash[_RUN_ID]


@pytest.fixture(scope="session")
def dsgtest_pool(request: pytest.FixtureRequest) -> Iterator[TestPool]:
    """``dsgtest/<run>-<xdist worker>``: this worker's corner of the pool.

    The run id keeps a pytest started from inside a test (or a second suite on the same
    host) from touching this run's datasets; the worker id keeps xdist workers apart.
    """
    config = request.config
    _require_zfs(config)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    root = f"{POOL}/{_run_id(config)[:8]}-{worker}"
    with pool_access(exclusive=False, lock_dir=_lock_dir(config)):
        subprocess.run(["zfs", "create", "-o", "mountpoint=none", root], check=True)
    yield TestPool(name=POOL, root=root)
    with pool_access(exclusive=False, lock_dir=_lock_dir(config)):
        _destroy_tree(root)


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
        """Where each dataset below the sandbox is mounted (from /proc/self/mountinfo)."""
        return {k: v for k, v in zfs_mounts().items() if k.startswith(self.dataset + "/")}


@pytest.fixture
def zfs_sandbox(dsgtest_pool: TestPool, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Sandbox]:
    """A dataset of this test's own (``mountpoint=none``), destroyed with all below it afterwards."""
    leaf = re.sub(r"[^A-Za-z0-9_-]", "-", request.node.name)[:60] + f"-{next(_counter)}"
    dataset = f"{dsgtest_pool.root}/{leaf}"
    subprocess.run(["zfs", "create", "-o", "mountpoint=none", dataset], check=True)
    allow = AllowList((dataset,))
    box = Sandbox(dataset=dataset, mount_dir=tmp_path, allow=allow, zfs=open_zfs(allow))
    yield box
    _destroy_tree(dataset)


@attrs.frozen
class RepositoryFactory:
    """``repository("survey")``: a Repository ``<sandbox>/survey`` that may change only the sandbox."""

    sandbox: Sandbox

    def __call__(self, leaf: str = "repo", **kwargs: Any) -> Repository:
        return Repository(f"{self.sandbox.dataset}/{leaf}", allow=self.sandbox.allow, **kwargs)

    def mountpoint(self, leaf: str = "repo") -> str:
        """A mount path for repository ``leaf``, under the sandbox's temporary directory."""
        return str(self.sandbox.mount_dir / leaf)


@pytest.fixture
def repository(zfs_sandbox: Sandbox) -> RepositoryFactory:
    """A factory of repositories confined to this test's sandbox (see RepositoryFactory)."""
    return RepositoryFactory(zfs_sandbox)


__all__ = [
    "FIXTURES",
    "HOW_TO_RUN",
    "POOL",
    "RepositoryFactory",
    "Sandbox",
    "TestPool",
    "default_lock_dir",
    "pool_access",
    "zfs_problem",
]
