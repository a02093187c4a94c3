"""What other tools snapshot of a repository during a transaction, on the in-memory pool:
the planning and the retiring (``core.retire``). The real-ZFS stories, named after the
tools, are tests/zfs/test_beside_other_tools.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsg_storage import DatasetBusyError, Queue, ReplicaError, Repository
from dsg_storage.core.records import left_bases
from dsg_storage.names import P_AUTO_SNAPSHOT, P_LEFT_BASES, P_RECOVERY_NOTE
from dsg_storage.settings import Settings
from dsg_storage.zfs.mounts import MS_NODEV, MS_NOSUID
from dsg_storage.zfs.port import Foreign
from dsg_storage.zfs.programs import on_off

from ..fakes import FakeZfs

REPO = "tank/data/survey"


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    pool = FakeZfs()
    pool.datasets["tank/data"] = {"mountpoint": "/tank/data"}
    settings = Settings(lock_dir=str(tmp_path / "locks"))
    repo = Repository(REPO, zfs=pool, queue=Queue(tmp_path / "queue.sqlite"), settings=settings)
    repo.begin(mountpoint="/srv/survey", owner="1000:1000").commit()
    return repo


def fake(repo: Repository) -> FakeZfs:
    assert isinstance(repo.zfs, FakeZfs)
    return repo.zfs


def temporaries(repo: Repository) -> list[str]:
    return sorted(n for n in [*fake(repo).datasets, *fake(repo).snaps] if ".dsg-" in n or "@dsg-base-" in n)


def test_a_snapshot_of_the_repository_taken_during_a_transaction_names_its_base_after_the_commit(
    repo: Repository,
) -> None:
    tx = repo.begin()
    fake(repo).snapshot([f"{REPO}@autosnap_1"])
    fake(repo).snapshot([f"{REPO}@autosnap_2"])
    base_guid = int(fake(repo).get_props(f"{REPO}@dsg-base-{tx.id}", ["guid"])["guid"])  # type: ignore[index]
    tx.commit()
    assert temporaries(repo) == []  # the old head and its base are gone: no leak
    assert f"{REPO}@autosnap_2" in fake(repo).snaps and f"{REPO}@autosnap_1" not in fake(repo).snaps
    assert int(fake(repo).get_props(f"{REPO}@autosnap_2", ["guid"])["guid"]) == base_guid  # type: ignore[index]
    note = fake(repo).datasets[REPO][P_RECOVERY_NOTE]
    assert "@autosnap_2" in note and "@autosnap_1 showed the same" in note


def test_a_snapshot_of_the_workspace_never_becomes_the_repositorys(repo: Repository) -> None:
    tx = repo.begin()
    fake(repo).snapshot([f"{tx.dataset}@nightly"])  # zfs snapshot -r PARENT@nightly takes both
    fake(repo).snapshot([f"{REPO}@nightly"])
    base = int(fake(repo).get_props(f"{REPO}@dsg-base-{tx.id}", ["guid"])["guid"])  # type: ignore[index]
    tx.commit()
    # @nightly is the repository's base (what it held), not the workspace's snapshot
    assert int(fake(repo).get_props(f"{REPO}@nightly", ["guid"])["guid"]) == base  # type: ignore[index]
    note = fake(repo).datasets[REPO][P_RECOVERY_NOTE]
    assert "destroyed @nightly, taken of the uncommitted workspace" in note and "now names" in note
    assert temporaries(repo) == []


def test_a_held_snapshot_of_the_workspace_refuses_the_commit_and_leaves_it_open(repo: Repository) -> None:
    tx = repo.begin()
    fake(repo).snapshot([f"{tx.dataset}@held"])
    fake(repo).busy.add(f"{tx.dataset}@held")
    with pytest.raises(DatasetBusyError, match="held by busy"):
        tx.commit()
    assert [p.state for p in repo.pending()] == ["open"]
    fake(repo).busy.clear()
    tx.commit()
    assert temporaries(repo) == [] and repo.pending() == []


def test_an_undone_workspace_a_tool_holds_a_snapshot_of_is_kept_aside_then_retired(repo: Repository) -> None:
    tx = repo.begin()
    fake(repo).snapshot([f"{tx.dataset}@backup"])
    fake(repo).busy.add(f"{tx.dataset}@backup")
    tx.rollback()
    gone = f"{REPO}.dsg-gone-{tx.id}"
    assert gone in fake(repo).datasets and repo.pending() == []
    fake(repo).busy = {f"{gone}@backup"}
    status = repo.status()
    assert status.leftovers == (gone,) and status.kept == {gone: "@backup held by busy"}
    repo.begin().commit()  # never in the way
    fake(repo).busy.clear()
    repo.recover()
    assert temporaries(repo) == []


def test_temporaries_carry_auto_snapshot_false_and_the_repository_keeps_its_owners_properties(
    repo: Repository,
) -> None:
    fake(repo).datasets[REPO].update({P_AUTO_SNAPSHOT: "true", "com.example:note": "mine"})
    tx = repo.begin()
    assert fake(repo).datasets[tx.dataset][P_AUTO_SNAPSHOT] == "false"
    tx.commit()
    assert fake(repo).datasets[REPO][P_AUTO_SNAPSHOT] == "true"
    assert fake(repo).datasets[REPO]["com.example:note"] == "mine"


def test_a_workspace_is_cloned_with_the_repositorys_own_setuid_devices_and_exec(repo: Repository) -> None:
    # a clone takes its parent's properties, not its origin's: without these the contents
    # of an imported bundle would run setuid in the workspace and, after commit, for good
    tx = repo.begin()
    assert not {"setuid", "devices", "exec"} & set(fake(repo).datasets[tx.dataset])  # inherited: nothing to carry
    tx.rollback()
    fake(repo).datasets[REPO].update({"setuid": "off", "devices": "off"})
    tx = repo.begin()
    workspace = fake(repo).datasets[tx.dataset]
    assert (on_off(workspace["setuid"]), on_off(workspace["devices"]), "exec" in workspace) == ("off", "off", False)
    tx.commit()
    assert (on_off(fake(repo).datasets[REPO]["setuid"]), on_off(fake(repo).datasets[REPO]["devices"])) == ("off", "off")
    assert fake(repo).host.flags["/srv/survey"] == MS_NOSUID | MS_NODEV  # mounted as its properties ask


def test_why_a_temporary_is_kept_names_the_holds_and_the_bookmarks() -> None:
    found = Foreign((("a", ()), ("b", ("zrepl", "backup"))), ("cursor",))
    assert found.held == {"b": ("zrepl", "backup")}
    assert found.why_kept() == "@b held by zrepl, backup; bookmarked (#cursor)"
    assert not Foreign()


def test_a_replica_is_not_recovered_mounted_or_changed_unless_the_caller_says_it_is_the_primary(
    repo: Repository, tmp_path: Path
) -> None:
    tx = repo.begin()
    pool = fake(repo)
    pool.datasets[REPO]["@received"] = "yes"  # what the family read says of received properties
    pool.host.table.clear()  # received unmounted (zfs receive -u)
    replica = Repository(REPO, zfs=pool, queue=Queue(tmp_path / "q2.sqlite"), settings=repo.settings)
    assert replica.recover() == [] and pool.host.table == {}  # the source's open transaction: not ours
    assert replica.status().replica and [p.tx for p in replica.status().pending] == [tx.id]
    assert replica.plan("recover") == []
    with pytest.raises(ReplicaError, match="replica"):
        replica.begin()
    with pytest.raises(ReplicaError):
        replica.rollback(tx.id)
    primary = Repository(REPO, zfs=pool, queue=Queue(tmp_path / "q3.sqlite"), settings=repo.settings, primary=True)
    assert primary.recover()  # now it is: the workspace is mounted again
    primary.rollback(tx.id)
    assert temporaries(repo) == []


def test_a_held_base_is_noted_on_the_repository_and_retried_by_recovery_anywhere(
    repo: Repository, tmp_path: Path
) -> None:
    tx = repo.begin()
    base = f"{REPO}@dsg-base-{tx.id}"
    fake(repo).busy.add(base)
    tx.rollback()
    assert fake(repo).datasets[REPO][P_LEFT_BASES] == tx.id
    assert base in repo.status().leftovers and repo.status().kept[base].startswith("not destroyed yet")
    repo.begin().commit()  # not in the way; the note survives the commit's swap
    assert fake(repo).datasets[REPO][P_LEFT_BASES] == tx.id
    fake(repo).busy.clear()
    elsewhere = Repository(REPO, zfs=fake(repo), queue=Queue(tmp_path / "other.sqlite"), settings=repo.settings)
    assert any("base kept by a hold retried" in done for done in elsewhere.recover())
    assert fake(repo).datasets[REPO][P_LEFT_BASES] == "" and temporaries(repo) == []


def test_a_hostile_left_bases_note_names_no_snapshot_and_breaks_no_recovery(repo: Repository) -> None:
    fake(repo).datasets[REPO][P_LEFT_BASES] = "x@y ../../etc " + "A" * 10_000 + " 20261203T120000Z-abcdef"
    assert left_bases(fake(repo).datasets[REPO]) == ("20261203T120000Z-abcdef",)
    repo.recover()  # the one well-formed id is retried (its base is gone: nothing left), the rest ignored
    assert fake(repo).datasets[REPO][P_LEFT_BASES] == ""
