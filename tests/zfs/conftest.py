"""Fixtures for our real-ZFS tests, built on our own plugin (``dsg_storage.testing``).

Every test here is marked ``zfs``: where ZFS is missing it fails, saying how to run it
(``./testpool/run python3 -m pytest`` brings a VM with real ZFS on any Linux machine).
The names below are the ones our tests have always used.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dsg_storage.testing import POOL, Sandbox, TestPool, pool_access

__all__ = ["POOL", "Sandbox", "pool_access"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.zfs)


@pytest.fixture
def exclusive_pool(dsgtest_exclusive: None) -> Iterator[None]:
    """The test may export and import dsgtest: no other test runs meanwhile."""
    yield


@pytest.fixture(scope="session")
def worker_root(dsgtest_pool: TestPool) -> str:
    """``dsgtest/<run>-<xdist worker>``: every dataset a worker makes lives below it."""
    return dsgtest_pool.root


@pytest.fixture
def sandbox(zfs_sandbox: Sandbox) -> Sandbox:
    """A test's own dataset and mount directory (``dsgtest/<run>-<worker>/<test>``)."""
    return zfs_sandbox
