"""The drop-in for HRDAG/dsg's ZFSOperations on real ZFS, used the way dsg uses it.

dsg's own real-ZFS tests check the content at ``mount_path``, which datasets exist and
that nothing is left over; the last tests are the cases dsg's own class gets wrong
today (after many syncs the mount path must show the latest commit, mounted once).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dsg_storage import ConflictError, TransactionInProgressError, TransactionNotFoundError
from dsg_storage.compat.dsg import P_DSG_TRANSACTION, ZFSOperations, dataset_for

from .conftest import POOL, Sandbox
from .test_crash_safety import at_step, in_child


def files(path: Path | str) -> dict[str, str]:
    root = Path(path)
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def ops_for(sandbox: Sandbox, leaf: str = "repo", *, traced: bool = False) -> ZFSOperations:
    """dsg's call: the pool, the repository's name within it, where it is mounted;
    ``traced``: through the sandbox's boundary, which a crash test watches."""
    repo_name = f"{sandbox.dataset.removeprefix(POOL + '/')}/{leaf}"
    return ZFSOperations(POOL, repo_name, str(sandbox.mount_dir / leaf), zfs=sandbox.zfs if traced else None)


def commits(sandbox: Sandbox, leaf: str = "repo") -> list[str]:
    return [n for n in sandbox.datasets() if n.startswith(f"{leaf}@dsg-commit-")]


def init_with(ops: ZFSOperations, content: dict[str, str], dsg_id: str = "init-1") -> None:
    path = ops.begin(dsg_id)
    for rel, text in content.items():
        Path(path, rel).parent.mkdir(parents=True, exist_ok=True)
        Path(path, rel).write_text(text)
    ops.commit(dsg_id)


def test_a_new_repository_via_init(sandbox: Sandbox) -> None:
    ops = ops_for(sandbox)
    assert ops.dataset_name == f"{sandbox.dataset}/repo" and ops.operation_type() == "init"
    path = ops.begin("tx-2026-12-01-a")
    assert Path(path).is_dir() and path != ops.mount_path
    Path(path, "data.csv").write_text("a,b\n")
    Path(path, "sub").mkdir()
    Path(path, "sub", "notes.txt").write_text("hi")
    ops.commit("tx-2026-12-01-a")

    assert files(ops.mount_path) == {"data.csv": "a,b\n", "sub/notes.txt": "hi"}
    assert sandbox.mounts() == {ops.dataset_name: [ops.mount_path]}
    assert len(commits(sandbox)) == 1 and sandbox.datasets() == ["repo", *commits(sandbox)]
    assert ops.history()[-1].message == "dsg transaction tx-2026-12-01-a"
    assert os.stat(ops.mount_path).st_uid == os.getuid()  # dsg's owner: whoever runs it
    assert ops.operation_type() == "sync"


def test_sync_begin_write_commit(sandbox: Sandbox) -> None:
    ops = ops_for(sandbox)
    init_with(ops, {"keep.txt": "k", "change.txt": "v1", "drop.txt": "d"})
    path = ops.begin("sync-7")
    assert path != ops.mount_path and files(path) == files(ops.mount_path)
    Path(path, "change.txt").write_text("v2")
    Path(path, "drop.txt").unlink()
    Path(path, "new.txt").write_text("n")
    ops.commit("sync-7")

    assert files(ops.mount_path) == {"keep.txt": "k", "change.txt": "v2", "new.txt": "n"}
    assert sandbox.mounts() == {ops.dataset_name: [ops.mount_path]}
    assert sandbox.datasets() == ["repo", *commits(sandbox)] and len(commits(sandbox)) == 2
    assert not Path(path).exists()


def test_begin_then_rollback_leaves_the_repository_as_it_was(sandbox: Sandbox) -> None:
    ops = ops_for(sandbox)
    init_with(ops, {"a.txt": "1"})
    before = sandbox.datasets()
    path = ops.begin("sync-rb")
    Path(path, "a.txt").write_text("changed")
    ops.rollback("sync-rb")

    assert files(ops.mount_path) == {"a.txt": "1"}
    assert sandbox.datasets() == before
    assert sandbox.mounts() == {ops.dataset_name: [ops.mount_path]}
    ops.rollback("sync-rb")  # as dsg's: rolling back what is not open does nothing
    ops.rollback("never-begun")


def test_an_init_rolled_back_leaves_nothing(sandbox: Sandbox) -> None:
    ops = ops_for(sandbox)
    Path(ops.begin("init-rb"), "x").write_text("x")
    ops.rollback("init-rb")
    assert sandbox.datasets() == [] and sandbox.mounts() == {}
    assert ops.operation_type() == "init"


def test_another_process_commits_with_dsgs_id(sandbox: Sandbox) -> None:
    ops = ops_for(sandbox)
    init_with(ops, {"a.txt": "1"})
    path = ops.begin("coordinated 42")  # any printable string is an id
    Path(path, "a.txt").write_text("2")
    script = (
        "import sys; from dsg_storage.compat.dsg import ZFSOperations; "
        "ZFSOperations(*sys.argv[1:4]).commit(sys.argv[4])"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, ops.pool_name, ops.repo_name, ops.mount_path, "coordinated 42"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert files(ops.mount_path) == {"a.txt": "2"}
    ops.commit("coordinated 42")  # repeated after it succeeded (a retry): nothing happens
    assert files(ops.mount_path) == {"a.txt": "2"} and len(commits(sandbox)) == 2
    with pytest.raises(TransactionNotFoundError, match="never-begun"):
        ops.commit("never-begun")


def test_begin_again_with_the_same_id_gives_the_same_path_and_a_second_writer_is_refused(
    sandbox: Sandbox,
) -> None:
    ops = ops_for(sandbox)
    init_with(ops, {"a.txt": "1"})
    path = ops.begin("s1")
    assert ops_for(sandbox).begin("s1") == path
    with pytest.raises(TransactionInProgressError):
        ops.begin("s2")
    family = sandbox.zfs.family(ops.dataset_name)
    assert sorted(props[P_DSG_TRANSACTION] for props in family.values() if P_DSG_TRANSACTION in props) == [
        "init-1",
        "s1",
    ]
    ops.rollback("s1")


def test_a_begin_killed_after_any_step_leaves_no_open_transaction_without_dsgs_id(sandbox: Sandbox) -> None:
    """dsg's id is created with the workspace: whatever step a begin is killed after, each
    temporary dataset it made carries the id, and a transaction it left open is found by
    it (begin gives its path again, rollback ends it)."""
    k = 0
    while True:
        k += 1
        ops = ops_for(sandbox, f"r{k}", traced=True)
        init_with(ops, {"a.txt": "1"})
        outcome = in_child(lambda ops=ops: ops.begin("s"), crash_at=at_step(k), zfs=sandbox.zfs)
        made = {n: p for n, p in sandbox.zfs.family(ops.dataset_name).items() if n.startswith(ops.dataset_name + ".")}
        assert [p.get(P_DSG_TRANSACTION) for p in made.values()] in ([], ["s"]), (k, made)
        ops.repository.recover()
        family = sandbox.zfs.family(ops.dataset_name)
        left_open = [p for p in ops.repository.pending() if p.state == "open"]
        assert [family[p.dataset].get(P_DSG_TRANSACTION) for p in left_open] in ([], ["s"]), (k, left_open)
        path = ops.begin("s")  # the one left open, or a new one
        assert path == (left_open[0].path if left_open else path) and files(path) == {"a.txt": "1"}
        ops.rollback("s")
        assert files(ops.mount_path) == {"a.txt": "1"} and ops.repository.pending() == []
        if outcome == "done":
            break
        assert k < 40, "begin never finished"
    assert k > 2, f"only {k - 1} crash points"


def test_a_write_to_the_repository_after_begin_is_a_conflict_not_a_lost_update(sandbox: Sandbox) -> None:
    ops = ops_for(sandbox)
    init_with(ops, {"a.txt": "1"})
    Path(ops.begin("s"), "a.txt").write_text("workspace")
    Path(ops.mount_path, "a.txt").write_text("written meanwhile")
    with pytest.raises(ConflictError):
        ops.commit("s")
    ops.rollback("s")
    assert files(ops.mount_path) == {"a.txt": "written meanwhile"}
    assert sandbox.datasets() == ["repo", *commits(sandbox)]


def test_after_ten_syncs_the_mount_path_shows_the_latest_commit_mounted_once(sandbox: Sandbox) -> None:
    ops = ops_for(sandbox)
    init_with(ops, {"n.txt": "0"})
    for n in range(1, 11):
        path = ops.begin(f"sync-{n}")
        Path(path, "n.txt").write_text(str(n))
        Path(path, f"file-{n}.txt").write_text(str(n))
        ops.commit(f"sync-{n}")
        assert Path(ops.mount_path, "n.txt").read_text() == str(n)

    assert files(ops.mount_path) == {"n.txt": "10", **{f"file-{n}.txt": str(n) for n in range(1, 11)}}
    assert sandbox.mounts() == {ops.dataset_name: [ops.mount_path]}
    mountinfo = Path("/proc/self/mountinfo").read_text().split("\n")
    assert sum(1 for line in mountinfo if f" {ops.mount_path} " in line) == 1
    # Nothing leaked: the repository and its 11 commit snapshots, no clone, no temp snapshot.
    assert sandbox.datasets() == ["repo", *commits(sandbox)] and len(commits(sandbox)) == 11
    assert [c.message for c in ops.history()] == ["dsg transaction init-1"] + [
        f"dsg transaction sync-{n}" for n in range(1, 11)
    ]
    assert [p.name for p in sandbox.mount_dir.iterdir()] == ["repo"]  # no workspace directories left


class CopyTransport:
    """dsg's LocalhostTransport, as far as init_repository uses it."""

    def copy_files(self, file_list: list[str], src_base: str, dest_base: str) -> None:
        for rel in file_list:
            Path(dest_base, rel).parent.mkdir(parents=True, exist_ok=True)
            Path(dest_base, rel).write_bytes(Path(src_base, rel).read_bytes())


def test_init_repository_copies_the_files_and_dsgs_metadata(sandbox: Sandbox, tmp_path: Path) -> None:
    local = tmp_path / "project"
    (local / ".dsg").mkdir(parents=True)
    (local / "input").mkdir()
    (local / "input" / "a.csv").write_text("a\n")
    (local / ".dsg" / "last-sync.json").write_text("{}")
    ops = ops_for(sandbox)
    ops.init_repository(["input/a.csv"], CopyTransport(), str(local), ops.mount_path)

    assert files(ops.mount_path) == {"input/a.csv": "a\n", ".dsg/last-sync.json": "{}"}
    assert Path(ops.mount_path, ".dsg", "archive").is_dir()
    assert sandbox.datasets() == ["repo", *commits(sandbox)]
    with pytest.raises(FileExistsError, match="never destroys"):
        ops.init_repository([], CopyTransport(), str(local), ops.mount_path, force=True)


def test_the_dataset_is_derived_from_the_mount_path_as_dsg_does(sandbox: Sandbox) -> None:
    pool_mnt = subprocess.run(
        ["zfs", "get", "-H", "-o", "value", "mountpoint", POOL], capture_output=True, text=True, check=True
    ).stdout.strip()
    rel = sandbox.dataset.removeprefix(POOL + "/")
    ops = ZFSOperations(POOL, "ignored", f"{pool_mnt}/{rel}/derived")
    assert ops.dataset_name == f"{sandbox.dataset}/derived"
    assert ops.validate_zfs_access() and ops._validate_zfs_access()
    assert dataset_for(POOL, "r", "/elsewhere/r", pool_mnt) == f"{POOL}/r"
