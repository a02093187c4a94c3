"""Retention on real ZFS: prune keeps exactly what the policy says, never what is held,
marked, cloned or the latest, and an interrupted prune leaves a clean subset."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dsg_storage import Repository, names
from dsg_storage.core.prune import prune, stored_policy
from dsg_storage.core.retention import RetentionPolicy
from dsg_storage.names import P_COMMITTED, P_KEEP, P_RETENTION, P_TX
from dsg_storage.zfs.port import Batch

from .conftest import Sandbox
from .test_crash_safety import in_child
from .test_dry_run import pool_state as dry_run_state
from .test_transactions import OWNER, files

START = datetime(2026, 1, 1, 12, tzinfo=UTC)  # a Thursday
DAYS = 100  # one commit a day at noon: 2026-01-01 .. 2026-04-10 (a Friday)
INIT_TIME = datetime(2025, 12, 1, 12, tzinfo=UTC)


def day(month: int, dom: int) -> str:
    return f"2026{month:02d}{dom:02d}"


def make_repo(sandbox: Sandbox) -> tuple[Repository, list[str]]:
    """A repository whose first commit is real (made 2025-12-01, as its property says) and
    whose next 100 are commit snapshots made directly, one a simulated day apart."""
    repo = Repository(f"{sandbox.dataset}/repo", zfs=sandbox.zfs)
    with repo.begin(mountpoint=str(sandbox.mount_dir / "repo"), owner=OWNER, mode="0750") as tx:
        Path(tx.path, "data.txt").write_text("first")
    first = repo.history()[0].snapshot
    sandbox.zfs.apply(Batch().set(first, {P_COMMITTED: INIT_TIME.isoformat(timespec="milliseconds")}))
    for n in range(DAYS):  # one call each: ZFS takes one snapshot of a dataset per txg
        when = START + timedelta(days=n)
        props = {P_TX: names.new_tx_id(when), P_COMMITTED: when.isoformat()}
        sandbox.zfs.snapshot([names.commit_snapshot(repo.name, when)], props)
    history = [c.snapshot for c in repo.history()]
    assert len(history) == DAYS + 1 and history[0] == first
    return repo, history


def short_days(repo: Repository) -> list[str]:
    """The remaining commits as YYYYMMDD (the first, real one as 'init')."""
    out = []
    for c in repo.history():
        out.append("init" if c.committed.startswith("2025") else c.name.removeprefix("dsg-commit-")[:8])
    return out


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (RetentionPolicy(last=3), [day(4, 8), day(4, 9), day(4, 10)]),
        (RetentionPolicy(daily=2, monthly=3), [day(2, 28), day(3, 31), day(4, 9), day(4, 10)]),
        # ISO weeks: W15 ends with Friday Apr 10; W14 and W13 end on Sundays Apr 5, Mar 29
        (RetentionPolicy(weekly=3), [day(3, 29), day(4, 5), day(4, 10)]),
        (RetentionPolicy(yearly=5), ["init", day(4, 10)]),
        (RetentionPolicy(last=1, monthly=12), ["init", day(1, 31), day(2, 28), day(3, 31), day(4, 10)]),
    ],
    ids=["last3", "daily2-monthly3", "weekly3", "yearly5", "last1-monthly12"],
)
def test_prune_keeps_exactly_the_commits_the_policy_names(
    sandbox: Sandbox, policy: RetentionPolicy, expected: list[str]
) -> None:
    repo, _ = make_repo(sandbox)
    result = prune(repo, policy)
    assert short_days(repo) == expected
    assert len(result.destroyed) == DAYS + 1 - len(expected) and result.skipped == {}
    # the head is untouched: its files, and a sync transaction still works on top
    assert files(sandbox.mount_dir / "repo") == {"data.txt": "first"}
    with repo.begin() as tx:
        Path(tx.path, "data.txt").write_text("second")
    assert files(sandbox.mount_dir / "repo") == {"data.txt": "second"}


def test_prune_never_destroys_held_marked_cloned_or_open_transaction_snapshots(sandbox: Sandbox) -> None:
    repo, history = make_repo(sandbox)
    held, marked, cloned = history[10], history[20], history[30]
    subprocess.run(["zfs", "hold", "mine", held], check=True)
    cli = [sys.executable, "-m", "dsg_storage", "--json", "--allow", sandbox.dataset]
    out = subprocess.run([*cli, "keep", repo.name, marked.split("@")[1]], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == {"snapshot": marked, "keep": True}
    sandbox.zfs.clone(f"{sandbox.dataset}/users-clone", cloned)
    tx = repo.begin()  # an open sync transaction: a base snapshot and a workspace cloned from it
    Path(tx.path, "data.txt").write_text("in progress")
    before = set(sandbox.datasets())
    # the dry run at the command line reads the guards by `zfs get`, the library by a channel program
    dry = subprocess.run(
        [*cli, "prune", repo.name, "--keep-last", "1", "--dry-run"], check=False, capture_output=True, text=True
    )
    assert dry.returncode == 0, dry.stderr

    result = prune(repo, RetentionPolicy(last=1))

    remaining = [c.snapshot for c in repo.history()]
    assert remaining == [held, marked, cloned, history[-1]]
    reasons = {d.snapshot: d.reasons for d in result.plan.keep}
    assert reasons[held] == ("held (1 hold)",) and reasons[marked] == ("marked keep",)
    assert reasons[cloned] == (f"origin of {sandbox.dataset}/users-clone",)
    assert {k["snapshot"]: tuple(k["reasons"]) for k in json.loads(dry.stdout)["keep"]} == reasons
    gone = before - set(sandbox.datasets())
    assert gone == {h.split("/")[-1] for h in history if h not in remaining}
    assert f"repo@dsg-base-{tx.id}" in sandbox.datasets()
    assert {"data.txt": "in progress"} == files(tx.path)
    tx.commit()
    assert files(sandbox.mount_dir / "repo") == {"data.txt": "in progress"}
    subprocess.run(["zfs", "release", "mine", held], check=True)
    # unmarking lets the next prune take it
    subprocess.run([*cli, "keep", "--remove", repo.name, marked.split("@")[1]], check=True, capture_output=True)
    assert (sandbox.zfs.get_props(marked, [P_KEEP]) or {}).get(P_KEEP) != "yes"
    prune(repo, RetentionPolicy(last=1))
    assert [c.snapshot for c in repo.history()] == [cloned, repo.history()[-1].snapshot]


def test_a_hold_taken_after_the_plan_is_skipped_not_forced(sandbox: Sandbox) -> None:
    repo, history = make_repo(sandbox)

    def hold_between_plan_and_destroy(step: str) -> None:
        if step == "planned":
            subprocess.run(["zfs", "hold", "late", history[5]], check=True)

    result = prune(repo, RetentionPolicy(last=2), on_step=hold_between_plan_and_destroy)
    assert set(result.skipped) == {history[5]} and "held" in result.skipped[history[5]]
    assert [c.snapshot for c in repo.history()] == [history[5], *history[-2:]]
    subprocess.run(["zfs", "release", "late", history[5]], check=True)


def test_dry_run_changes_nothing_and_lists_the_steps(sandbox: Sandbox) -> None:
    repo, history = make_repo(sandbox)

    def pool_state() -> tuple[list[str], dict[str, list[str]], list[str]]:
        return dry_run_state(sandbox)  # every property but space accounting, which moves with the pool

    before = pool_state()
    cli = [sys.executable, "-m", "dsg_storage", "--json", "--allow", sandbox.dataset, "prune", repo.name]
    out = subprocess.run(
        [*cli, "--keep-last", "2", "--save-policy", "--dry-run"], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert plan["dry_run"] is True and plan["destroyed"] == []
    assert plan["destroy"] == history[:-2] and plan["steps"] == [f"destroy {n}" for n in history[:-2]]
    assert [k["snapshot"] for k in plan["keep"]] == history[-2:]
    assert pool_state() == before

    # no flags and no stored policy: a usage error, nothing touched
    out = subprocess.run(cli, capture_output=True, text=True, check=False)
    assert out.returncode == 2 and "no stored retention policy" in out.stderr
    # --save-policy stores it; a later prune with no flags applies it
    out = subprocess.run([*cli, "--keep-daily", "3", "--save-policy"], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert stored_policy(repo) == RetentionPolicy(daily=3)
    assert (sandbox.zfs.get_props(repo.name, [P_RETENTION]) or {})[P_RETENTION] == "daily=3"
    assert short_days(repo) == [day(4, 8), day(4, 9), day(4, 10)]
    when = START + timedelta(days=DAYS)
    sandbox.zfs.apply(Batch().snapshot(names.commit_snapshot(repo.name, when), {P_COMMITTED: when.isoformat()}))
    out = subprocess.run(cli, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["policy"]["daily"] == 3
    assert len(repo.history()) == 3


def test_a_stored_policy_that_is_garbage_is_a_clear_error(sandbox: Sandbox) -> None:
    repo, _ = make_repo(sandbox)
    sandbox.zfs.apply(Batch().set(repo.name, {P_RETENTION: "daily=1; rm -rf /"}))
    out = subprocess.run(
        [sys.executable, "-m", "dsg_storage", "--allow", sandbox.dataset, "prune", repo.name],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 2 and "stored retention policy is unreadable" in out.stderr
    assert "Traceback" not in out.stderr and len(repo.history()) == DAYS + 1


STEPS = ["recovered", "planned", "destroyed 1/4", "destroyed 2/4", "destroyed 3/4"]


@pytest.mark.parametrize("kill_at", STEPS)
def test_prune_killed_after_each_step_leaves_a_subset_with_the_latest(sandbox: Sandbox, kill_at: str) -> None:
    repo, history = make_repo(sandbox)
    policy = RetentionPolicy(last=2, monthly=2)
    keep = {history[-2], history[-1], history[90]}  # Apr 9, Apr 10, and Mar 31 (monthly)

    def run() -> None:
        def die(step: str) -> None:
            if step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

        prune(repo, policy, chunk=25, on_step=die)

    assert in_child(run) == "killed"
    remaining = [c.snapshot for c in repo.history()]
    assert set(remaining) <= set(history) and keep <= set(remaining)
    assert remaining[-1] == history[-1]
    done = STEPS.index(kill_at) - 1  # batches finished before the kill
    assert len(remaining) == DAYS + 1 - max(0, done) * 25
    prune(repo, policy)
    assert {c.snapshot for c in repo.history()} == keep


def test_prune_killed_at_random_moments_leaves_a_subset_with_the_latest(sandbox: Sandbox) -> None:
    repo, history = make_repo(sandbox)
    rng = random.Random(17)

    def run() -> None:
        prune(repo, RetentionPolicy(last=3), chunk=7)

    for _ in range(3):
        in_child(run, kill_after=rng.uniform(0.5, 4.0))
        remaining = [c.snapshot for c in repo.history()]
        assert set(remaining) <= set(history) and remaining[-3:] == history[-3:]
    prune(repo, RetentionPolicy(last=3))
    assert [c.snapshot for c in repo.history()] == history[-3:]
