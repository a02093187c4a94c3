"""Reading ``zpool list`` (pure: the text as zpool prints it).

The listing is read while other processes import, create and export pools; what it
prints then is the parser's input, and a line it cannot read is a clear error.
"""

from __future__ import annotations

import random

import pytest

from dsg_storage.errors import PoolOpenError
from dsg_storage.zfs.zpool import parse_pool_list

LISTING = (
    "dsgtest\t1234567890123456789\tONLINE\t-\ndsgtest-ro-a1b2c3\t987654321\tDEGRADED\t/tmp/dsg-storage-offline-x\n"
)


def test_pools_by_name_with_their_guid_health_and_altroot() -> None:
    pools = parse_pool_list(LISTING)
    assert sorted(pools) == ["dsgtest", "dsgtest-ro-a1b2c3"]
    assert (pools["dsgtest"].guid, pools["dsgtest"].health, pools["dsgtest"].altroot) == (
        1234567890123456789,
        "ONLINE",
        None,
    )
    assert pools["dsgtest-ro-a1b2c3"].altroot == "/tmp/dsg-storage-offline-x"


def test_a_pool_listed_before_it_is_loaded_has_no_guid_and_fails_nothing() -> None:
    """Seen in the suite: another worker's pool, mid-import, listed with ``-`` for every
    property; reading the listing then crashed ``--offline`` with a ValueError."""
    pools = parse_pool_list(LISTING + "dsgtest-off-9f8e7d\t-\tFAULTED\t-\n")
    assert pools["dsgtest-off-9f8e7d"].guid is None
    assert pools["dsgtest"].guid == 1234567890123456789


@pytest.mark.parametrize(
    "line",
    ["dsgtest\t12x\tONLINE\t-", "dsgtest\t123\tONLINE", "\t123\tONLINE\t-", "dsgtest\t1\tONLINE\t-\textra"],
)
def test_a_line_it_cannot_read_is_a_clear_error(line: str) -> None:
    with pytest.raises(PoolOpenError, match="zpool list printed a line this version cannot read"):
        parse_pool_list(LISTING + line + "\n")


def test_mutated_listings_parse_or_are_refused_with_our_error() -> None:
    seed = 20261206
    rng = random.Random(seed)
    alphabet = "\t\n-0123456789abc/ \x00é²"
    for iteration in range(3000):
        text = list(LISTING)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(text) + 1)
            match rng.randrange(3):
                case 0 if text:
                    del text[min(at, len(text) - 1)]
                case 1:
                    text.insert(at, rng.choice(alphabet))
                case _ if text:
                    text[min(at, len(text) - 1)] = rng.choice(alphabet)
        mutated = "".join(text)
        try:
            pools = parse_pool_list(mutated)
        except PoolOpenError:
            continue
        except Exception as error:  # the failure names what reproduces it
            raise AssertionError(f"seed {seed}, iteration {iteration}: {mutated!r}: {error!r}") from error
        assert all(p.guid is None or p.guid >= 0 for p in pools.values())
