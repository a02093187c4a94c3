"""The receive patterns' planner (``core.receive``): given what the pool shows and what
a checked source carries, an import plans these steps, with its commit point last.
Pure: no ZFS (the real-ZFS import tests are tests/zfs/test_bundles*.py)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

import pytest

from dsg_storage import BundleError, ConflictError, DatasetExistsError, InvalidArgumentError, RepositoryNotFoundError
from dsg_storage.core.actions import Apply, Rename, Rollback, SetNative, Unmount
from dsg_storage.core.history import transferable
from dsg_storage.core.options import Owner
from dsg_storage.core.receive import (
    Incoming,
    Receive,
    RequireUnchanged,
    StreamPart,
    plan_full,
    plan_incremental,
)
from dsg_storage.core.view import PoolView
from dsg_storage.names import P_IMPORT, P_MODE, P_OWNER
from dsg_storage.zfs.port import Snapshot

from ..fakes import FakeZfs

REPO = "tank/data/survey"
TX = "20261203T120000Z-abcdef"
NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
OWNER = Owner(1000, 1000)


class Source:
    """A source as the transfer wing hands it over (its parts are never read here)."""

    def __init__(self, snapshots: Sequence[Incoming], base: Incoming | None = None) -> None:
        self.name, self.base, self.snapshots = "survey.dsgb", base, tuple(snapshots)

    def parts(self) -> Iterator[StreamPart]:
        raise AssertionError("a plan reads no stream")


def view(family: dict[str, dict[str, str]]) -> PoolView:
    return PoolView(REPO, family, {}, NOW)


def snap(short: str, guid: int) -> Snapshot:
    return Snapshot(f"{REPO}@{short}", guid, guid, 1764547200, {})


FULL = Source([Incoming("dsg-commit-a", 11, {"dsg-storage:tx": "t1"}), Incoming("dsg-commit-b", 12)])


def test_a_full_source_is_received_beside_the_repository_and_renamed_into_place_last() -> None:
    pool = view({"tank/data": {"mountpoint": "/srv"}})
    plan = plan_full(pool, FULL, tx=TX, mountpoint="/data/survey", owner=OWNER, mode=None)
    recv = f"{REPO}.dsg-recv-{TX}"
    assert [type(a) for a in plan.actions] == [Receive, SetNative, Apply, Rename]
    assert plan.actions[plan.commit_point] == Rename(recv, REPO)
    assert plan.actions[1] == SetNative(
        recv, {"setuid": "off", "devices": "off", "mountpoint": "/data/survey", "zoned": "on"}
    )
    assert (plan.kind, plan.mountpoint, plan.owner, plan.mode) == ("full", "/data/survey", "1000:1000", "0755")
    lines = plan.describe()
    assert lines[0] == f"import (full) into {REPO}: transaction {TX}"
    assert lines[4].endswith("<- the commit point") and f"rename {recv} to {REPO}" in lines[4]
    assert "dsg-commit-a, dsg-commit-b" in lines[1]


def test_a_full_source_inheriting_its_mountpoint_sets_no_mountpoint_and_no_zoned() -> None:
    plan = plan_full(view({"tank/data": {"mountpoint": "/srv"}}), FULL, tx=TX, mountpoint=None, owner=OWNER, mode=0o700)
    assert plan.mountpoint == "/srv/survey" and plan.mode == "0700"
    assert plan.actions[1] == SetNative(f"{REPO}.dsg-recv-{TX}", {"setuid": "off", "devices": "off"})


@pytest.mark.parametrize(
    ("family", "error"),
    [
        ({"tank/data": {"mountpoint": "/srv"}, REPO: {}}, DatasetExistsError),
        ({}, RepositoryNotFoundError),  # no parent
        ({"tank/data": {"mountpoint": "none"}}, InvalidArgumentError),  # no mountpoint to inherit, none given
    ],
)
def test_a_full_source_that_cannot_land_is_refused_before_any_step(
    family: dict[str, dict[str, str]], error: type[Exception]
) -> None:
    with pytest.raises(error):
        plan_full(view(family), FULL, tx=TX, mountpoint=None, owner=OWNER, mode=None)


HEAD = {"mountpoint": "/srv/survey", P_OWNER: "1000:1000", P_MODE: "0750", "setuid": "off", "devices": "off"}
CHAIN = [snap("dsg-commit-a", 11), snap("dsg-base-x", 99), snap("dsg-commit-b", 12)]
INCREMENTAL = Source([Incoming("dsg-commit-c", 13)], base=Incoming("dsg-commit-b", 12))


def test_an_incremental_source_checks_marks_rolls_back_receives_and_commits_in_one_sync_task() -> None:
    plan = plan_incremental(view({REPO: HEAD}), transferable(CHAIN), INCREMENTAL, tx=TX, owner=None, mode=None)
    assert plan.actions[:4] == (
        Unmount(REPO),
        RequireUnchanged(REPO, f"{REPO}@dsg-commit-b"),
        SetNative(REPO, {"zoned": "on", P_IMPORT: f"{TX} dsg-commit-b"}),
        Rollback(REPO),
    )
    assert plan.actions[4] == Receive(REPO, INCREMENTAL)
    assert plan.commit_point == len(plan.actions) - 1 == 5  # setuid/devices are off already
    last = plan.actions[5]
    assert isinstance(last, Apply) and [line.split(" (")[0] for line in last.batch.describe()[-2:]] == [
        f"inherit {P_IMPORT} on {REPO}",
        f"inherit zoned on {REPO}",
    ]
    assert (plan.owner, plan.mode, plan.mountpoint) == ("1000:1000", "0750", None)


def test_an_incremental_source_makes_an_unsafe_repository_safe_before_its_commit_point() -> None:
    head = {**HEAD, "setuid": "on"}
    plan = plan_incremental(view({REPO: head}), transferable(CHAIN), INCREMENTAL, tx=TX, owner=OWNER, mode=0o700)
    assert plan.actions[5] == SetNative(REPO, {"setuid": "off"})
    assert (plan.owner, plan.mode) == ("1000:1000", "0700")


@pytest.mark.parametrize(
    ("chain", "source", "message"),
    [
        ([snap("dsg-commit-a", 11)], INCREMENTAL, "wrong base"),
        (CHAIN + [snap("dsg-commit-z", 40)], INCREMENTAL, "dsg-commit-b is there but is not the latest"),
        ([], INCREMENTAL, "no snapshot"),
        (CHAIN, Source([Incoming("dsg-commit-a", 13)], base=Incoming("dsg-commit-b", 12)), "already has"),
    ],
)
def test_an_incremental_source_that_does_not_fit_is_refused_saying_why(
    chain: list[Snapshot], source: Source, message: str
) -> None:
    with pytest.raises(BundleError, match=message):
        plan_incremental(view({REPO: HEAD}), transferable(chain), source, tx=TX, owner=None, mode=None)


def test_an_incremental_source_needs_the_repository() -> None:
    with pytest.raises(RepositoryNotFoundError, match="applies onto its base dsg-commit-b"):
        plan_incremental(view({}), [], INCREMENTAL, tx=TX, owner=None, mode=None)


def test_the_change_check_ignores_the_root_and_names_the_rest() -> None:
    zfs = FakeZfs()
    zfs.datasets[REPO] = {}
    zfs.changed[REPO] = ["M\t/", "M\t/data.csv"]
    with pytest.raises(ConflictError, match="data.csv") as raised:
        RequireUnchanged(REPO, f"{REPO}@dsg-commit-b").apply(zfs)
    assert "M\t/," not in str(raised.value)
    zfs.changed[REPO] = ["M\t/"]
    RequireUnchanged(REPO, f"{REPO}@dsg-commit-b").apply(zfs)  # the root alone: no change
