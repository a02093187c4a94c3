"""Which repositories ``recover --pool`` takes (pure: the fake pool)."""

from __future__ import annotations

import pytest

from dsg_storage.core.pool import repositories_in
from dsg_storage.errors import InvalidNameError
from dsg_storage.names import P_OWNER
from dsg_storage.settings import Settings
from dsg_storage.zfs.allow import AllowList
from tests.fakes import FakeZfs
from tests.unit.conftest import InProcess

TX = "20261202T040000Z-abcdef"


def test_the_allowed_repositories_of_the_pool_and_those_known_by_a_temporary_dataset() -> None:
    zfs = FakeZfs(allow=("tank/data",))
    zfs.datasets = {
        "tank": {},
        "tank/data": {},
        "tank/data/a": {P_OWNER: "0:0"},
        "tank/data/a.dsg-ws-" + TX: {P_OWNER: "0:0"},
        f"tank/data/b.dsg-init-{TX}": {P_OWNER: "0:0"},  # an init not committed yet
        f"tank/data/c.dsg-recv-{TX}": {},  # a full import not finished
        "tank/data/plain": {},  # not ours
        "tank/other/d": {P_OWNER: "0:0"},  # not allowed
    }
    assert repositories_in(zfs, "tank") == ["tank/data/a", "tank/data/b", "tank/data/c"]
    assert repositories_in(zfs, "vault") == []


@pytest.mark.parametrize("bad", ["", "tank/data", "tank@x", "mirror", "1tank", "ta nk", "../x"])
def test_a_bad_pool_name_is_refused_before_zfs_is_asked(bad: str) -> None:
    with pytest.raises(InvalidNameError):
        repositories_in(FakeZfs(), bad)


@pytest.mark.parametrize("argv", [["recover"], ["recover", "tank/data/a", "--pool", "tank"]])
def test_recover_takes_a_repository_or_a_pool(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from dsg_storage.cli.commands import EXIT_USAGE, main

    assert main(["--allow", "tank", *argv]) == EXIT_USAGE
    assert "name a repository or give --pool POOL" in capsys.readouterr().err


def test_recover_pool_skips_only_what_recovery_would_leave_alone(cli: InProcess) -> None:
    """The pool-wide read decides "nothing to do" only where the full way (the lock, a
    read of its own, the planner) plans nothing: a quiet repository in place is left
    alone, an unmounted one is remounted, an open transaction is left open."""
    from dsg_storage.core.pool import _listing, _nothing_to_do
    from dsg_storage.core.repository import Repository
    from dsg_storage.core.view import members_by_repository, mount_table

    quiet, unmounted, busy = cli.repository("tank/data/a"), cli.repository("tank/data/b"), cli.repository("tank/data/c")
    tx = cli.ok("begin", busy)["tx"]
    cli.pool.host.unmount(unmounted)
    zfs = cli.boundary(AllowList.parse("tank/data"))
    listing = _listing(zfs, "tank")
    siblings, mounts = members_by_repository(listing), mount_table(zfs.host.mounts())
    for name in (quiet, unmounted, busy):
        planned = Repository(name, zfs=zfs, settings=Settings.from_environ(cli.env)).plan("recover")
        if _nothing_to_do(listing, siblings, name, mounts, [], None):
            assert planned == [], name
    assert _nothing_to_do(listing, siblings, quiet, mounts, [], None)
    assert not _nothing_to_do(listing, siblings, unmounted, mounts, [], None)
    assert not _nothing_to_do(listing, siblings, busy, mounts, [], None)  # a transaction: the full way decides

    done = {r["repository"]: r["actions"] for r in cli.ok("recover", "--pool", "tank")["repositories"]}
    assert done == {quiet: [], unmounted: [f"remounted {unmounted} at {cli.tmp}/srv/b"], busy: []}
    assert cli.pool.host.mounts()[unmounted] == [f"{cli.tmp}/srv/b"]
    assert [p["tx"] for p in cli.ok("status", busy)["pending"]] == [tx]


def test_families_cut_from_one_index_are_the_families_cut_one_by_one() -> None:
    from dsg_storage.core.view import family_in, members_by_repository

    listing = {
        name: {"mountpoint": f"/m/{name}"}
        for name in (
            "tank/data",
            "tank/data/r",
            "tank/data/r.dsg-ws-20261204T000000Z-abcdef",
            "tank/data/r.dsg-x.dsg-old-20261204T000000Z-abcdef",  # a member of r and of r.dsg-x
            "tank/data/r.dsg-x",
            "tank/data/r2",
            "tank/data/r/child.dsg-ws-20261204T000000Z-abcdef",  # not a sibling of r
            "tank/other/r.dsg-ws-20261204T000000Z-abcdef",  # another parent
        )
    }
    members = members_by_repository(listing)
    for repository in ("tank/data/r", "tank/data/r.dsg-x", "tank/data/r2", "tank/data/r/child", "tank/none/r"):
        alone = family_in(listing, repository)
        assert family_in(listing, repository, members) == alone, repository
        expected = (
            None
            if alone is None
            else {
                name
                for name in listing
                if name.rsplit("/", 1)[0] == repository.rsplit("/", 1)[0]
                and (name == repository or name.startswith(repository + ".dsg-"))
            }
            | {repository.rsplit("/", 1)[0]}
        )
        assert (set(alone) if alone is not None else None) == expected, repository
    assert set(family_in(listing, "tank/data/r") or {}) == {
        "tank/data",
        "tank/data/r",
        "tank/data/r.dsg-ws-20261204T000000Z-abcdef",
        "tank/data/r.dsg-x.dsg-old-20261204T000000Z-abcdef",
        "tank/data/r.dsg-x",
    }
