"""How channel-program values are read (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsg_storage.zfs.programs import largest_limits, on_off


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
