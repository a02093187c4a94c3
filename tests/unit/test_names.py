"""Name validation and the naming scheme: pure logic, no ZFS."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from dsg_storage import InvalidNameError, names


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "empty"),
        ("tank", "pool's root"),
        ("tank/a@snap", "'@'"),
        ("tank/a#mark", "'#'"),
        ("tank/../etc", "'..'"),
        ("tank//a", "empty component"),
        ("/tank/a", "empty component"),
        ("tank/a/", "empty component"),
        ("tank/a*b", "characters ZFS refuses"),
        ("tank/a%b", "characters ZFS refuses"),
        ("1tank/a", "not a valid pool name"),
        ("mirror/a", "not a valid pool name"),
        ("tank/repo.dsg-ws-x", "reserved"),
        ("tank/" + "x" * 250, "exceed ZFS's limit"),
    ],
)
def test_invalid_repository_names_are_refused_with_the_reason(name: str, reason: str) -> None:
    with pytest.raises(InvalidNameError, match=reason):
        names.validate_repository(name)


@pytest.mark.parametrize("name", ["tank/a", "tank/data/survey-2026", "dsgtest/gw0/x_y.z:1"])
def test_valid_repository_names_pass(name: str) -> None:
    assert names.validate_repository(name) == name


def test_longest_valid_name_still_fits_every_temporary_name() -> None:
    longest = "tank/" + "x" * 300
    while True:
        try:
            names.validate_repository(longest)
            break
        except InvalidNameError:
            longest = longest[:-1]
    tx = names.new_tx_id()
    for temp in (
        names.init_dataset(longest, tx),
        names.workspace_dataset(longest, tx),
        names.old_dataset(longest, tx),
        names.base_snapshot(longest, tx),
    ):
        assert len(temp) <= names.MAX_NAME_LEN


def test_tx_ids_sort_by_time_and_parse_back() -> None:
    early = names.new_tx_id(datetime(2026, 1, 1, tzinfo=UTC))
    late = names.new_tx_id(datetime(2026, 11, 21, 7, 15, 30, tzinfo=UTC))
    assert early < late and late.startswith("20261121T071530Z-")
    assert names.validate_tx_id(late) == late
    for kind, build in (("init", names.init_dataset), ("ws", names.workspace_dataset), ("old", names.old_dataset)):
        assert names.parse_temporary(build("tank/a/repo", late)) == ("tank/a/repo", kind, late)
    assert names.parse_temporary("tank/a/repo") is None


@pytest.mark.parametrize("tx", ["", "abc", "20261121T071530Z", "20261121T071530Z-XYZ123", "../x"])
def test_malformed_tx_ids_are_refused(tx: str) -> None:
    with pytest.raises(InvalidNameError):
        names.validate_tx_id(tx)


def test_commit_snapshot_names_are_readable_and_sortable() -> None:
    a = names.commit_snapshot("tank/r", datetime(2026, 11, 21, 7, 15, 30, 5000, tzinfo=UTC))
    b = names.commit_snapshot("tank/r", datetime(2026, 11, 21, 7, 15, 30, 120000, tzinfo=UTC))
    assert a == "tank/r@dsg-commit-20261121T071530.005Z"
    assert a < b and names.is_commit_snapshot(b.split("@")[1])


ARABIC_ONE = "\u0661"  # "١": str.isdigit() and \d take it, and int() reads it as 1


@pytest.mark.parametrize("name", ["repo\n", "tank/repo\n", "tank/a" + ARABIC_ONE, "tank/a\x1b[31m", "tank/\u00e9"])
def test_repository_names_are_ascii_to_the_last_character(name: str) -> None:
    with pytest.raises(InvalidNameError):
        names.validate_repository(name)


@pytest.mark.parametrize("name", ["tank\n", "tank" + ARABIC_ONE, "\u00e9tank", "c0\nx"])
def test_pool_names_are_ascii_to_the_last_character(name: str) -> None:
    with pytest.raises(InvalidNameError):
        names.validate_pool(name)


@pytest.mark.parametrize(
    "tx",
    [
        "20261121T071530Z-3fa2c1\n",
        "2026112" + ARABIC_ONE + "T071530Z-3fa2c1",
        "20261121T07153" + ARABIC_ONE + "Z-3fa2c1",
        "\n20261121T071530Z-3fa2c1",
    ],
)
def test_tx_ids_with_a_newline_or_other_digits_are_refused(tx: str) -> None:
    with pytest.raises(InvalidNameError):
        names.validate_tx_id(tx)


@pytest.mark.parametrize("short", ["s1\n", "s" + ARABIC_ONE, "dsg-commit-2026\n", "a\x1b", ""])
def test_snapshot_names_with_a_newline_or_other_digits_are_refused(short: str) -> None:
    assert not names.is_snapshot_short(short) and not names.valid_snapshot_short(short)


def test_temporary_names_parse_only_when_whole() -> None:
    tx = "20261121T071530Z-3fa2c1"
    assert names.parse_temporary(f"tank/a.dsg-ws-{tx}") == ("tank/a", "ws", tx)
    for name in (f"tank/a.dsg-ws-{tx}\n", f"tank/a.dsg-ws-{tx.replace('1', ARABIC_ONE)}", f"tank/a\n.dsg-ws-{tx}"):
        assert names.parse_temporary(name) is None, name
