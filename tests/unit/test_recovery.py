"""Recovery's planner, state by state: given what the pool shows, recovery does this.

Each fixture is a state a crash leaves (the real-ZFS SIGKILL tests in
tests/zfs/test_crash_safety.py reach them all); the planner is pure, so these run
without ZFS. The last tests run recovery's loop to its end on an in-memory pool.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dsg_storage import CorruptStateError, Queue, Repository
from dsg_storage.core.options import Owner
from dsg_storage.core.records import Phase, Record
from dsg_storage.core.recovery import RecoveryStep, plan_recovery, undo_transaction
from dsg_storage.core.view import PoolView
from dsg_storage.names import (
    P_BEGUN,
    P_COMMIT_MESSAGE,
    P_COMMIT_SNAPSHOT,
    P_IMPORT,
    P_INHERITS,
    P_MODE,
    P_MOUNTPOINT,
    P_OWNER,
    P_PATH,
    P_PATTERN,
    P_PENDING,
    P_REPO,
    P_STATE,
    P_TX,
)
from dsg_storage.zfs.host import BoundaryStep

from ..fakes import FakeZfs

REPO = "tank/data/survey"
TX = "20261121T071530Z-3fa2c1"
MNT = "/srv/survey"
WS_PATH = f"{MNT}.dsg-tx-{TX}"
WS, INIT, OLD, RECV = (f"{REPO}.dsg-{kind}-{TX}" for kind in ("ws", "init", "old", "recv"))
BASE = f"{REPO}@dsg-base-{TX}"
NOW = datetime(2026, 12, 1, 12, 0, 0, 123000, tzinfo=UTC)
COMMIT = f"{REPO}@dsg-commit-20261201T120000.123Z"


def tx_props(pattern: str = "sync", state: str = "open", **extra: str) -> dict[str, str]:
    """What begin records on a temporary dataset: since #15 it carries the
    repository's own mountpoint (and zoned=on, not read by the planner) from its creation;
    ``legacy_props`` is what earlier versions wrote."""
    return {
        P_STATE: state,
        P_INHERITS: "no",
        P_TX: TX,
        P_PATTERN: pattern,
        P_REPO: REPO,
        P_PATH: WS_PATH,
        P_MOUNTPOINT: MNT,
        P_OWNER: "1000:1000",
        P_MODE: "0750",
        P_BEGUN: "2026-11-21T07:15:30+00:00",
        "mountpoint": MNT,
        **extra,
    }


def legacy_props(**extra: str) -> dict[str, str]:
    """A temporary dataset as earlier versions created it: mounted by its own property at the
    workspace path (commit then sets the mountpoint property)."""
    return tx_props(**{"mountpoint": WS_PATH, **extra})


def committed_head(**extra: str) -> dict[str, str]:
    """A repository whose last transaction committed: its props stay on it."""
    earlier = "20261120T000000Z-aaaaaa"
    return {
        **tx_props(state="committed"),
        P_TX: earlier,
        P_PATH: f"{MNT}.dsg-tx-{earlier}",
        "mountpoint": MNT,
        **extra,
    }


def view(
    family: dict[str, dict[str, str]], mounts: dict[str, tuple[str, ...]] | None = None, **facts: object
) -> PoolView:
    return PoolView(
        REPO,
        {"tank/data": {"mountpoint": "/tank/data"}, **family},
        mounts or {},
        NOW,
        **facts,  # type: ignore[arg-type]
    )


def plan(v: PoolView) -> list[list[str]]:
    """Each step as its summary followed by its actions, one line each."""
    return [[step.summary, *(a.describe() for a in step.actions)] for step in plan_recovery(v)]


OWNED = "give /srv/survey owner 1000:1000 and mode 0750"


# ---------------------------------------------------------------- nothing to do
def test_a_committed_repository_mounted_where_it_records_needs_nothing() -> None:
    assert plan(view({REPO: committed_head()}, {REPO: (MNT,)})) == []


def test_an_open_transaction_with_its_workspace_mounted_is_left_alone() -> None:
    family = {REPO: committed_head(**{P_PENDING: TX}), WS: tx_props()}
    assert plan(view(family, {REPO: (MNT,), WS: (WS_PATH,)})) == []


def test_a_dataset_not_created_by_dsg_storage_is_never_mounted_by_us() -> None:
    assert plan(view({REPO: {"mountpoint": "/elsewhere"}})) == []


# ---------------------------------------------------------------- 1: commit point passed
def test_sync_commit_past_its_commit_point_is_finished() -> None:
    """Killed right after renaming the workspace to REPO: the head carries the workspace's
    open record; the old head still exists beside it."""
    family = {REPO: tx_props(**{P_COMMIT_MESSAGE: "weekly"}), OLD: committed_head()}
    step, then = plan(view(family, {OLD: (MNT,), REPO: (WS_PATH,)}))
    assert then[0] == f"{TX}: retired {OLD} destroyed"  # planned too, not needed once the batch ran
    assert step == [
        f"{TX}: commit finished",
        f"detach {OLD} (readers keep it)",
        f"unmount {REPO} from {WS_PATH}",
        f"mount {REPO} at {MNT}",
        OWNED,
        f"remove the empty directory {WS_PATH}",
        (
            "in one sync task: "
            f"set dsg-storage:commit-snapshot={COMMIT!r} on {REPO}; promote if possible {REPO}; snapshot {COMMIT}; "
            f"set dsg-storage:tx={TX!r} on {COMMIT}; "
            f"set dsg-storage:committed='2026-12-01T12:00:00.123+00:00' on {COMMIT}; "
            f"set dsg-storage:message='weekly' on {COMMIT}; "
            f"inherit zoned on {REPO} (clear its local value); "
            f"inherit com.sun:auto-snapshot on {REPO} (clear its local value); "
            f"set dsg-storage:state='committed' on {REPO}; "
            f"destroy if possible {OLD}; destroy if possible {BASE}"
        ),
    ]


def test_a_commit_begun_by_0_2_sets_the_mountpoint_property_when_finished() -> None:
    """Its workspace was created with the workspace path as its mountpoint: finishing
    sets the repository's (the property only) before mounting it."""
    family = {REPO: legacy_props(), OLD: committed_head()}
    step, _ = plan(view(family, {OLD: (MNT,), REPO: (WS_PATH,)}))
    assert step[2:5] == [
        f"unmount {REPO} from {WS_PATH}",
        f"set mountpoint={MNT} on {REPO} (zfs set -u: the property, not the mount)",
        f"mount {REPO} at {MNT}",
    ]


def test_a_commit_whose_snapshot_was_taken_completes_it_instead_of_taking_another() -> None:
    taken = f"{REPO}@dsg-commit-20261130T000000.000Z"
    family = {REPO: tx_props(pattern="init", **{P_COMMIT_SNAPSHOT: taken, "mountpoint": MNT})}
    (step,) = plan(view(family, {REPO: (MNT,)}, commit_snapshot_exists=True))
    assert step[-1] == (
        f"in one sync task: set dsg-storage:commit-snapshot={taken!r} on {REPO}; promote if possible {REPO}; "
        f"set dsg-storage:tx={TX!r} on {taken}; "
        f"set dsg-storage:committed='2026-12-01T12:00:00.123+00:00' on {taken}; "
        f"inherit zoned on {REPO} (clear its local value); "
        f"inherit com.sun:auto-snapshot on {REPO} (clear its local value); "
        f"set dsg-storage:state='committed' on {REPO}"
    )
    assert f"mount {REPO} at {MNT}" not in step  # already there


def test_an_inherited_mountpoint_is_never_set() -> None:
    inherited = "/tank/data/survey"
    props = tx_props(pattern="init", **{P_INHERITS: "yes", P_MOUNTPOINT: inherited, "mountpoint": inherited})
    (step,) = plan(view({REPO: props}))
    assert not [line for line in step if line.startswith("set mountpoint")]
    assert f"mount {REPO} at {inherited}" in step


# ---------------------------------------------------------------- 2, 3: bundle imports
def test_an_interrupted_full_import_is_destroyed() -> None:
    assert plan(view({RECV: {"mountpoint": "none"}})) == [
        [f"{TX}: interrupted bundle import {RECV} destroyed", f"destroy {RECV} and its snapshots"]
    ]


def test_an_interrupted_incremental_import_is_rolled_back_to_its_base() -> None:
    head = committed_head(**{P_IMPORT: f"{TX} dsg-commit-1"})
    step = plan(view({REPO: head}, {REPO: (MNT,)}, snapshots=("dsg-commit-0", "dsg-commit-1", "s2", "s3")))
    assert step == [
        [
            f"{TX}: interrupted bundle import undone (back to dsg-commit-1)",
            f"destroy snapshots {REPO}@s2, {REPO}@s3",
            f"roll {REPO} back to its latest snapshot",
            f"in one sync task: inherit dsg-storage:import on {REPO} (clear its local value)",
        ]
    ]


def test_an_import_mark_whose_base_is_latest_only_needs_a_rollback() -> None:
    head = committed_head(**{P_IMPORT: f"{TX} b"})
    (step,) = plan(view({REPO: head}, {REPO: (MNT,)}, snapshots=("a", "b")))
    assert step[1:] == [
        f"roll {REPO} back to its latest snapshot",
        f"in one sync task: inherit dsg-storage:import on {REPO} (clear its local value)",
    ]


def test_an_import_mark_whose_base_is_gone_is_only_cleared() -> None:
    (step,) = plan(view({REPO: committed_head(**{P_IMPORT: f"{TX} gone"})}, {REPO: (MNT,)}, snapshots=("a",)))
    assert step[1:] == [f"in one sync task: inherit dsg-storage:import on {REPO} (clear its local value)"]


def test_an_import_mark_on_a_zoned_repository_is_undone_and_the_repository_unzoned() -> None:
    """An incremental import sets the mark and zoned=on in one command; undone, the
    repository is mounted by ZFS at boot again."""
    head = committed_head(**{P_IMPORT: f"{TX} b", "zoned": "on"})
    steps = plan(view({REPO: head}, {}, snapshots=("a", "b")))
    assert steps[0][0] == f"{TX}: interrupted bundle import undone (back to b)"
    assert steps[-1] == [
        f"{REPO} mountable at boot again (zoned cleared)",
        f"in one sync task: inherit zoned on {REPO} (clear its local value)",
    ]


def test_a_committed_zoned_repository_is_unzoned_a_plain_one_is_not() -> None:
    """A full import killed after its rename leaves the repository zoned=on."""
    zoned = plan(view({REPO: committed_head(zoned="1")}, {REPO: (MNT,)}))
    assert zoned == [
        [
            f"{REPO} mountable at boot again (zoned cleared)",
            f"in one sync task: inherit zoned on {REPO} (clear its local value)",
        ]
    ]
    assert plan(view({REPO: committed_head(zoned="off")}, {REPO: (MNT,)})) == []
    assert plan(view({REPO: {"mountpoint": MNT, "zoned": "on"}}, {})) == []  # not ours: its owner's business


# ---------------------------------------------------------------- 4a: interrupted begin / rollback
def test_an_interrupted_init_begin_is_undone() -> None:
    props = tx_props(pattern="init", state="beginning")
    assert plan(view({INIT: props}, {INIT: (WS_PATH,)})) == [
        [
            f"{TX}: interrupted begin undone",
            f"unmount {INIT}",
            f"remove the empty directory {WS_PATH}",
            f"destroy {INIT}",
        ]
    ]


def test_an_open_transaction_whose_begin_the_lock_file_names_is_undone() -> None:
    """Created in state open, but its begin died before its last step (core.lock)."""
    family = {REPO: committed_head(**{P_PENDING: TX}), WS: tx_props()}
    (step,) = plan(view(family, {REPO: (MNT,)}, unfinished_begin=TX))
    assert step[0] == f"{TX}: interrupted begin undone"
    assert f"destroy {WS}" in step


def test_an_open_transaction_the_lock_file_does_not_name_is_kept() -> None:
    family = {REPO: committed_head(**{P_PENDING: TX}), WS: tx_props()}
    (step,) = plan(view(family, {REPO: (MNT,)}, unfinished_begin="20261121T071530Z-000000"))
    assert step[0] == f"{TX}: open workspace remounted at {WS_PATH}"


def test_an_interrupted_sync_rollback_also_removes_the_base_and_the_pending_mark() -> None:
    family = {REPO: committed_head(**{P_PENDING: TX}), WS: tx_props(state="aborting")}
    (step,) = plan(view(family, {REPO: (MNT,)}))
    assert step == [
        f"{TX}: interrupted rollback undone",
        f"unmount {WS}",
        f"remove the empty directory {WS_PATH}",
        f"destroy {WS}",
        f"in one sync task: destroy if possible {BASE}; set dsg-storage:pending='' on {REPO}",
    ]


def test_a_rollback_marks_the_transaction_aborting_first() -> None:
    record = Record.parse(WS, tx_props())
    lines = [a.describe() for a in undo_transaction(view({REPO: committed_head()}), record)]
    assert lines[0] == f"in one sync task: set dsg-storage:state='aborting' on {WS}"


def test_undoing_a_transaction_whose_dataset_is_gone_only_removes_its_directory() -> None:
    record = Record.parse(INIT, tx_props(pattern="init", state="aborting"))
    assert [a.describe() for a in undo_transaction(view({}), record)] == [f"remove the empty directory {WS_PATH}"]


# ---------------------------------------------------------------- 4b: a commit asked for
def test_a_sync_commit_killed_before_setting_the_repository_aside_is_taken_on() -> None:
    family = {REPO: committed_head(**{P_PENDING: TX}), WS: tx_props(state="committing")}
    assert plan(view(family, {REPO: (MNT,), WS: (WS_PATH,)})) == [
        [
            f"{TX}: commit resumed: repository set aside",
            f"unmount {WS}",
            f"remount {REPO} at {MNT} read-only",
            f"rename {REPO} to {OLD}",
        ]
    ]


def test_a_sync_commit_killed_between_its_renames_goes_on_to_its_commit_point() -> None:
    family = {OLD: committed_head(**{P_PENDING: TX}), WS: tx_props(state="committing")}
    assert plan(view(family, conflicts={TX: ()})) == [
        [f"{TX}: commit resumed", f"unmount {WS}", f"rename {WS} to {REPO}"]
    ]


def test_a_killed_sync_commit_that_would_lose_a_change_is_rolled_back_and_says_why() -> None:
    family = {OLD: committed_head(**{P_PENDING: TX}), WS: tx_props(state="committing")}
    why = "the repository was changed after begin (/late.txt)"
    note = f"2026-12-01T12:00:00+00:00 {TX}: commit rolled back by recovery: {why}"
    assert plan(view(family, conflicts={TX: ("/late.txt",)})) == [
        [
            f"{TX}: commit rolled back ({why})",
            f"rename {OLD} to {REPO}",
            f"in one sync task: set dsg-storage:state='aborting' on {WS}; set dsg-storage:recovery-note={note!r} on {REPO}",
        ]
    ]


def test_a_killed_init_commit_goes_on_to_its_commit_point() -> None:
    assert plan(view({INIT: tx_props(pattern="init", state="committing")})) == [
        [f"{TX}: commit resumed", f"unmount {INIT}", f"rename {INIT} to {REPO}"]
    ]


def test_a_killed_init_commit_whose_name_was_taken_meanwhile_is_rolled_back() -> None:
    family = {REPO: {"mountpoint": "/other"}, INIT: tx_props(pattern="init", state="committing")}
    (step,) = plan(view(family))
    assert step[0] == f"{TX}: commit rolled back (the repository was created by someone else meanwhile)"
    assert step[1].startswith(f"in one sync task: set dsg-storage:state='aborting' on {INIT}")


# ---------------------------------------------------------------- 4c: 0.1's commit between its renames
def test_a_sync_commit_stopped_between_its_renames_is_resumed() -> None:
    family = {OLD: committed_head(**{P_PENDING: TX}), WS: tx_props()}
    assert plan(view(family, conflicts={TX: ()})) == [
        [f"{TX}: commit resumed", f"unmount {WS}", f"rename {WS} to {REPO}"]
    ]


def test_a_sync_commit_stopped_between_its_renames_after_a_change_renames_the_old_head_back() -> None:
    family = {OLD: committed_head(**{P_PENDING: TX}), WS: tx_props()}
    assert plan(view(family, conflicts={TX: ("M\t/late.txt",)})) == [
        [
            f"{TX}: commit not finished (repository changed since begin); transaction left open",
            f"rename {OLD} to {REPO}",
        ]
    ]


# ---------------------------------------------------------------- 4d: open, unmounted
def test_an_open_sync_workspace_not_mounted_is_remounted_with_the_repository() -> None:
    family = {REPO: committed_head(**{P_PENDING: TX}), WS: tx_props()}
    assert plan(view(family)) == [
        [
            f"{TX}: open workspace remounted at {WS_PATH}",
            f"mount {REPO} at {MNT}",
            OWNED,
            f"mount {WS} at {WS_PATH}",
            f"give {WS_PATH} owner 1000:1000 and mode 0750",
        ],
        [f"remounted {REPO} at {MNT}", f"mount {REPO} at {MNT}", OWNED],
    ]


def test_an_open_init_workspace_not_mounted_is_remounted_alone() -> None:
    (step,) = plan(view({INIT: tx_props(pattern="init")}))
    assert step[1:] == [f"mount {INIT} at {WS_PATH}", f"give {WS_PATH} owner 1000:1000 and mode 0750"]


# ---------------------------------------------------------------- 5: leftovers
def test_an_orphaned_base_snapshot_is_removed() -> None:
    (step,) = plan(view({REPO: committed_head(**{P_PENDING: TX})}, {REPO: (MNT,)}))
    assert step == [
        f"{TX}: orphaned base snapshot removed",
        f"in one sync task: destroy if possible {BASE}; set dsg-storage:pending='' on {REPO}",
    ]


def test_an_old_head_without_its_workspace_gets_the_repository_name_back() -> None:
    assert plan(view({OLD: committed_head()})) == [
        [f"{TX}: workspace gone, old head {OLD} restored", f"rename {OLD} to {REPO}"]
    ]


def test_retired_old_heads_are_unmounted_and_destroyed() -> None:
    (step,) = plan(view({REPO: committed_head(), OLD: committed_head()}, {REPO: (MNT,), OLD: ("/x",)}))
    assert step == [
        f"{TX}: retired {OLD} destroyed",
        f"detach {OLD} (readers keep it)",
        f"in one sync task: promote if possible {REPO}; destroy if possible {OLD}; destroy if possible {BASE}",
    ]


def test_a_dead_readers_snapshot_mounts_are_released_before_the_old_head_retires() -> None:
    held = (f"{OLD}@dsg-commit-1", "/tmp/dsg-storage-read-4242-x/m0")
    (step,) = plan(view({REPO: committed_head(), OLD: committed_head()}, {REPO: (MNT,)}, orphaned_mounts=(held,)))
    assert step[1] == f"unmount {held[0]} from {held[1]} (left by a reader that is gone)"


# ---------------------------------------------------------------- 6: placement
def test_a_repository_mounted_at_the_workspace_path_after_an_import_is_moved_home() -> None:
    (step,) = plan(view({REPO: committed_head()}, {REPO: (WS_PATH,)}))
    assert step == [f"remounted {REPO} at {MNT}", f"unmount {REPO} from {WS_PATH}", f"mount {REPO} at {MNT}", OWNED]


def test_a_repository_whose_mountpoint_property_differs_gets_it_set() -> None:
    (step,) = plan(view({REPO: committed_head(mountpoint="/old/place")}))
    assert step[1] == f"set mountpoint={MNT} on {REPO} (zfs set -u: the property, not the mount)"


# ---------------------------------------------------------------- hostile properties
@pytest.mark.parametrize(
    ("key", "value"),
    [(P_TX, "not-a-tx"), (P_PATTERN, "merge"), (P_PATH, "relative/path"), (P_OWNER, "root"), (P_MODE, "99999")],
)
def test_a_record_that_cannot_be_read_is_a_clear_error(key: str, value: str) -> None:
    with pytest.raises(CorruptStateError, match=WS.replace(".", r"\.")):
        plan_recovery(view({REPO: committed_head(), WS: tx_props(**{key: value})}))


def test_a_record_missing_a_property_is_a_clear_error() -> None:
    props = tx_props()
    del props[P_MOUNTPOINT]
    with pytest.raises(CorruptStateError, match="mountpoint is missing"):
        plan_recovery(view({WS: props}))


def test_a_head_with_an_unusable_owner_is_a_clear_error() -> None:
    with pytest.raises(CorruptStateError, match="owner"):
        plan_recovery(view({REPO: committed_head(**{P_OWNER: "0:0:0"})}))


# ---------------------------------------------------------------- recovery's loop
@pytest.fixture
def pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeZfs:
    monkeypatch.setenv("DSG_STORAGE_LOCK_DIR", str(tmp_path / "locks"))
    fake = FakeZfs()
    fake.datasets["tank/data"] = {"mountpoint": "/tank/data"}
    return fake


def repository(pool: FakeZfs, tmp_path: Path) -> Repository:
    return Repository(REPO, zfs=pool, queue=Queue(tmp_path / "queue.sqlite"))


def test_recovery_finishes_a_commit_stopped_between_its_renames(pool: FakeZfs, tmp_path: Path) -> None:
    pool.datasets[OLD] = committed_head(**{P_PENDING: TX})
    pool.datasets[WS] = {**tx_props(), "origin": f"{OLD}@dsg-base-{TX}"}
    pool.snaps[f"{OLD}@dsg-base-{TX}"] = {P_TX: TX, "createtxg": "1"}
    actions = repository(pool, tmp_path).recover()
    assert actions == [f"{TX}: commit resumed", f"{TX}: commit finished"]
    assert set(pool.datasets) == {"tank/data", REPO}
    assert pool.datasets[REPO][P_STATE] == Phase.COMMITTED
    assert pool.datasets[REPO]["mountpoint"] == MNT and "origin" not in pool.datasets[REPO]
    (snapshot,) = pool.snaps  # the base is gone, the commit snapshot is there
    assert snapshot.startswith(f"{REPO}@dsg-commit-") and pool.snaps[snapshot][P_TX] == TX
    assert pool.host.mounts() == {REPO: [MNT]}
    assert pool.host.owners[MNT] == (1000, 1000, 0o750)


def test_recovery_leaves_a_conflicting_commit_open_with_everything_back_in_place(pool: FakeZfs, tmp_path: Path) -> None:
    pool.datasets[OLD] = committed_head(**{P_PENDING: TX})
    pool.datasets[WS] = {**tx_props(), "origin": f"{OLD}@dsg-base-{TX}"}
    pool.snaps[f"{OLD}@dsg-base-{TX}"] = {P_TX: TX, "createtxg": "1"}
    pool.changed[OLD] = ["M\t/late.txt"]
    actions = repository(pool, tmp_path).recover()
    assert actions[0].endswith("transaction left open")
    assert set(pool.datasets) == {"tank/data", REPO, WS}
    assert pool.host.mounts() == {REPO: [MNT], WS: [WS_PATH]}


def test_a_destroy_that_stays_busy_is_deferred_once_not_retried_forever(pool: FakeZfs, tmp_path: Path) -> None:
    pool.datasets[REPO] = committed_head()
    pool.datasets[OLD] = committed_head()
    pool.busy.add(OLD)
    queue = Queue(tmp_path / "queue.sqlite")
    actions = Repository(REPO, zfs=pool, queue=queue).recover()
    assert actions == [f"{TX}: retired {OLD} destroyed (deferred: {OLD} still in use)", f"remounted {REPO} at {MNT}"]
    assert [item.target for item in queue.items()] == [OLD]


class Stop(BaseException):  # as a kill: no handler of the library runs
    pass


def initialised(tmp_path: Path, k: int) -> tuple[FakeZfs, Repository]:
    """A fresh fake pool with one committed repository."""
    fake = FakeZfs()
    fake.datasets["tank/data"] = {"mountpoint": "/tank/data"}
    repo = Repository(REPO, zfs=fake, queue=Queue(tmp_path / f"q{k}.sqlite"))
    with repo.begin(mountpoint=MNT, owner="1000:1000", mode="0750"):
        pass
    return fake, repo


def stopped_after(fake: FakeZfs, k: int, operation: Callable[[], object]) -> bool:
    """Run ``operation``, stopping it right after its k-th change; True if it finished."""
    at = fake.steps.count + k

    def stop(step: BoundaryStep) -> None:
        if step.index == at:
            raise Stop

    fake.steps.observer = stop
    try:
        operation()
        return True
    except Stop:
        return False
    finally:
        fake.steps.observer = None


def test_recovery_of_every_step_of_a_fake_sync_commit_ends_old_or_new(pool: FakeZfs, tmp_path: Path) -> None:
    """Stop a commit after each of its changes (on the fake pool), recover, and check the
    commit was completed: its first change records that the caller asked for it."""
    k = 0
    while True:
        k += 1
        fake, repo = initialised(tmp_path, k)
        tx = repo.begin()
        finished = stopped_after(fake, k, lambda repo=repo, tx=tx: repo.commit(tx.id, "m"))
        repo.recover()
        assert repo.pending() == []  # a killed commit never stays open
        assert set(fake.datasets) == {"tank/data", REPO}
        assert fake.host.mounts() == {REPO: [MNT]}
        assert fake.snapshots(REPO)[-1].user_props.get("dsg-storage:message") == "m"
        if finished:
            break
    assert k > 5


def test_a_begin_stopped_after_any_change_is_undone_and_a_finished_one_stays_open(
    pool: FakeZfs, tmp_path: Path
) -> None:
    """The pool records the transaction as open from its first sync task on; the lock
    file's note is what tells recovery that the begin never finished."""
    k = 0
    while True:
        k += 1
        fake, repo = initialised(tmp_path, k)
        begun: list[str] = []
        finished = stopped_after(fake, k, lambda repo=repo, begun=begun: begun.append(repo.begin().id))
        repo.recover()
        if finished:
            assert [p.tx for p in repo.pending()] == begun
            break
        assert repo.pending() == [], f"a begin stopped after change {k} left its transaction"
        assert set(fake.datasets) == {"tank/data", REPO} and fake.host.mounts() == {REPO: [MNT]}
    assert k > 2


def test_an_owner_given_by_name_is_recorded_as_numbers() -> None:
    assert str(Owner.parse((1000, 1000))) == "1000:1000"
    assert Owner.parse_ids("0:0") == Owner(0, 0)


def test_steps_are_values_so_recovery_can_tell_it_tried_one() -> None:
    a = plan_recovery(view({OLD: committed_head()}))
    b = plan_recovery(view({OLD: committed_head()}))
    assert a == b and isinstance(a[0], RecoveryStep) and len({*a, *b}) == 1
    assert a[0].describe() == [f"{TX}: workspace gone, old head {OLD} restored", f"  rename {OLD} to {REPO}"]


def test_a_commit_refused_after_its_promote_keeps_the_history_and_rolls_back_cleanly(
    pool: FakeZfs, tmp_path: Path
) -> None:
    """Commit promotes the workspace in its first sync task (so that renaming the
    repository away does not cost a check of every snapshot); when it is then refused,
    history still reads through the workspace, and a rollback hands it back."""
    from dsg_storage import ConflictError

    repo = repository(pool, tmp_path)
    with repo.begin(mountpoint=MNT, owner="1000:1000", mode="0750"):
        pass
    history = [c.name for c in repo.history()]
    tx = repo.begin()
    pool.changed[f"{REPO}.dsg-old-{tx.id}"] = ["M\t/late.txt"]  # written after begin: refused
    with pytest.raises(ConflictError):
        tx.commit("refused")
    assert pool.datasets[REPO]["origin"] == f"{tx.dataset}@dsg-base-{tx.id}"  # promoted, then refused
    assert [c.name for c in repo.history()] == history
    tx.rollback()
    assert set(pool.datasets) == {"tank/data", REPO} and "origin" not in pool.datasets[REPO]
    assert [c.name for c in repo.history()] == history
    assert [s.short_name for s in pool.snapshots(REPO)] == history
