"""How channel-program values are read, how a batch is built, and the limits a program is
given (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsg_storage.zfs.limits import DEFAULT_LIMITS, batch_limits, largest_limits
from dsg_storage.zfs.programs import Batch, on_off


@pytest.mark.parametrize(("raw", "name"), [("on", "on"), (1, "on"), ("1", "on"), ("off", "off"), (0, "off")])
def test_an_on_off_property_reads_the_same_by_name_or_number(raw: object, name: str) -> None:
    assert on_off(raw) == name


def test_anything_else_is_neither() -> None:
    assert on_off(None) not in ("on", "off") and on_off("noauto") == "noauto"


def test_read_only_programs_get_the_kernels_largest_limits(tmp_path: Path) -> None:
    (tmp_path / "zfs_lua_max_instrlimit").write_text("100000000\n")
    (tmp_path / "zfs_lua_max_memlimit").write_text("104857600\n")
    assert largest_limits(tmp_path) == {"instrlimit": 100_000_000, "memlimit": 100 << 20}


@pytest.mark.parametrize("garbage", ["", "-5", "0", "1e9", "lots\n", "\x00\xff"])
def test_a_limit_that_cannot_be_read_is_left_to_pyzfs(tmp_path: Path, garbage: str) -> None:
    (tmp_path / "zfs_lua_max_memlimit").write_text(garbage, encoding="latin-1")
    assert largest_limits(tmp_path) == {}  # the instruction limit's file is missing
    assert largest_limits(tmp_path / "no-such-module") == {}


def test_a_batch_set_each_is_the_sets_one_by_one_in_order() -> None:
    changes = [(f"p/r@s{i}", {"dsg-storage:tx": f"t{i}", "dsg-storage:message": f"m{i}"}) for i in range(5)]
    one_by_one = Batch().snapshot("p/r@new")
    for name, props in changes:
        one_by_one = one_by_one.set(name, props)
    together = Batch().snapshot("p/r@new").set_each(iter(changes))
    assert together == one_by_one
    assert together.ops[-4:] == ("V", "p/r@s4", "dsg-storage:message", "m4")
    assert together.targets[-2:] == ("p/r@s4", "p/r@s4")  # one per op, naming the one that fails
    assert Batch().set_each([("p/r@s0", {})]) == Batch()  # a snapshot without properties adds nothing


def test_a_bundles_worth_of_snapshots_makes_one_batch() -> None:
    # 100,000 snapshots (a bundle's most): as many ops as sets, every one in place
    changes = ((f"p/r@s{i}", {"dsg-storage:tx": f"t{i}"}) for i in range(100_000))
    batch = Batch().set_each(changes)
    assert len(batch.targets) == 100_000 and batch.ops[4 * 99_999 :] == ("V", "p/r@s99999", "dsg-storage:tx", "t99999")


def test_a_batch_is_given_the_limits_its_size_needs_between_the_default_and_the_largest() -> None:
    largest = {"instrlimit": 100_000_000, "memlimit": 100 << 20}
    small = Batch().set("p/r", {"dsg-storage:state": "open"})
    assert batch_limits(small.ops, len(small.targets), largest) == DEFAULT_LIMITS
    # a bundle of 10,000 commits: 30,000 property changes, past pyzfs's 10 MiB (measured
    # in the VM: ~1.2 KiB a snapshot), within the kernel's largest
    props = {"dsg-storage:tx": "tx-20261207T000000-abcdef12", "dsg-storage:message": "m" * 40, "dsg-storage:x": "y"}
    big = Batch().set_each((f"pool/some/repo@dsg-commit-2026-12-07T00:00:{i:09d}Z", props) for i in range(10_000))
    limits = batch_limits(big.ops, len(big.targets), largest)
    assert limits["memlimit"] > 2 * 10_000 * 1200 and limits["instrlimit"] >= 30_000_000
    assert limits["memlimit"] <= largest["memlimit"]
    # never past what the kernel allows (it would refuse the call), nor without one known
    huge = Batch().set_each((f"p/r@s{i}", props) for i in range(100_000))
    assert batch_limits(huge.ops, len(huge.targets), largest) == largest
    assert batch_limits(huge.ops, len(huge.targets), {}) == DEFAULT_LIMITS
