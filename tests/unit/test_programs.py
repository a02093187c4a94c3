"""How channel-program values are read (pure)."""

from __future__ import annotations

import pytest

from dsg_storage.zfs.programs import on_off


@pytest.mark.parametrize(("raw", "name"), [("on", "on"), (1, "on"), ("1", "on"), ("off", "off"), (0, "off")])
def test_an_on_off_property_reads_the_same_by_name_or_number(raw: object, name: str) -> None:
    assert on_off(raw) == name


def test_anything_else_is_neither() -> None:
    assert on_off(None) not in ("on", "off") and on_off("noauto") == "noauto"
