"""A user's real-ZFS tests, written against dsg_storage.testing's fixtures only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.zfs


def test_a_commit_puts_the_files_at_the_mountpoint(repository) -> None:  # type: ignore[no-untyped-def]
    repo = repository("survey")
    mountpoint = repository.mountpoint("survey")
    with repo.begin(mountpoint=mountpoint) as tx:
        Path(tx.path, "results.csv").write_text("a,b\n1,2\n")
    with repo.begin() as tx:
        Path(tx.path, "results.csv").write_text("a,b\n1,3\n")
    assert Path(mountpoint, "results.csv").read_text() == "a,b\n1,3\n"
    assert len(repo.history()) == 2


def test_each_test_has_a_dataset_of_its_own(zfs_sandbox, dsgtest_pool) -> None:  # type: ignore[no-untyped-def]
    assert zfs_sandbox.dataset.startswith(f"{dsgtest_pool.root}/")
    assert dsgtest_pool.root.endswith("-" + os.environ.get("PYTEST_XDIST_WORKER", "main"))
    assert zfs_sandbox.datasets() == []
    assert zfs_sandbox.mount_dir.is_dir()
