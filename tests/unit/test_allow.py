"""The allow-list: pure logic, no ZFS."""

from __future__ import annotations

import pytest

from dsg_storage import AllowList, InvalidNameError, NotAllowedError
from dsg_storage.settings import Settings


def test_nothing_is_allowed_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DSG_STORAGE_ALLOW", raising=False)
    with pytest.raises(NotAllowedError, match="nothing"):
        Settings.default().allow.check("tank/a")


def test_prefix_allows_itself_and_below_but_not_lookalikes() -> None:
    allow = AllowList.parse("tank/data, other")
    assert allow.allows("tank/data") and allow.allows("tank/data/x") and allow.allows("tank/data/x@snap")
    assert allow.allows("other/deep/x")
    assert not allow.allows("tank/database") and not allow.allows("tank") and not allow.allows("tankx/data")


def test_refusal_is_a_permission_error_that_names_the_dataset_and_the_fix() -> None:
    with pytest.raises(PermissionError) as info:
        AllowList.parse("tank/data").check("tank/other")
    assert "tank/other" in str(info.value) and "DSG_STORAGE_ALLOW" in str(info.value)


def test_env_and_arguments_combine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSG_STORAGE_ALLOW", "a/x,b")
    combined = Settings.default().allow | AllowList.parse(["c"])
    assert combined.prefixes == ("a/x", "b", "c")


@pytest.mark.parametrize("entry", ["tank@s", "/tank", "tank/../x", "tank//x"])
def test_malformed_entries_are_refused(entry: str) -> None:
    with pytest.raises(InvalidNameError):
        AllowList.parse(entry)
