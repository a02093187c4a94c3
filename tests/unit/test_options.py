"""Owner, mode, mountpoint and user property checks: pure logic, no ZFS."""

from __future__ import annotations

import pytest

from dsg_storage import InvalidArgumentError, Owner
from dsg_storage.core.options import check_mountpoint, check_user_properties, parse_mode
from dsg_storage.names import P_AUTO_SNAPSHOT, P_DSG_TRANSACTION, P_STATE, P_TX


def test_owner_accepts_numbers_names_and_tuples() -> None:
    assert Owner.parse("1000:100") == Owner(1000, 100)
    assert Owner.parse("root:root") == Owner(0, 0)
    assert Owner.parse((5, 6)) == Owner(5, 6)
    assert str(Owner(1, 2)) == "1:2"


@pytest.mark.parametrize("text", ["1000", ":1", "1:", "no-such-user-x:0", "-1:0"])
def test_bad_owners_are_refused(text: str) -> None:
    with pytest.raises(InvalidArgumentError):
        Owner.parse(text)


@pytest.mark.parametrize("text", ["\u0661:0", "0:\u0661", "1000\n:0", " 1:0"])
def test_owner_ids_are_ascii_digits(text: str) -> None:
    """``int`` reads other scripts' digits ("\u0661" is 1) and ``isdigit`` takes them."""
    with pytest.raises(InvalidArgumentError):
        Owner.parse_ids(text)
    with pytest.raises(InvalidArgumentError):
        Owner.parse(text)


def test_modes_are_octal_permission_bits() -> None:
    assert parse_mode("0750") == parse_mode("750") == parse_mode(0o750) == 0o750
    for bad in ("9", "rwx", "100000", -1):
        with pytest.raises(InvalidArgumentError):
            parse_mode(bad)


def test_mountpoints_must_be_absolute_and_normalized() -> None:
    assert check_mountpoint("/srv/data") == "/srv/data"
    assert check_mountpoint("/srv/data/") == "/srv/data"
    for bad in ("srv/data", "/", "/srv/../etc", "/srv//data", "/srv/./data"):
        with pytest.raises(InvalidArgumentError):
            check_mountpoint(bad)


def test_user_properties_zfs_would_take_are_kept() -> None:
    props = {"org.example:job": "42", "a:b": "", "x.y-z_0:w": "é" * 4095, P_DSG_TRANSACTION: "sync 7"}
    assert check_user_properties(props) == props


@pytest.mark.parametrize(
    "props",
    [
        {"nocolon": "v"},  # a native property's form: not a user property
        {"Org.example:job": "v"},  # ZFS takes lowercase only
        {"org example:job": "v"},
        {"": "v"},
        {"a:" + "b" * 254: "v"},  # 256 characters: ZFS takes fewer
        {P_TX: "20261121T071530Z-3fa2c1"},  # the transaction's own record
        {P_STATE: "committed"},
        {P_AUTO_SNAPSHOT: "true"},  # managed on our temporaries
        {"a:b": "nul\0inside"},
        {"a:b": "x" * 8192},
        {"a:b": "é" * 4096},  # 8,192 bytes of UTF-8
        {"a:b": "lone \udc80 surrogate"},
        {"a:b": 7},
        {3: "v"},
    ],
)
def test_user_properties_zfs_or_we_would_refuse_are_refused_by_name(props: dict) -> None:
    with pytest.raises(InvalidArgumentError, match="property"):
        check_user_properties(props)
