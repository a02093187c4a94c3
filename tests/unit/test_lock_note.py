"""The step lock's note of a begin under way (``core.lock``): what recovery reads from
the lock file to tell a begin that died from a transaction that is open."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsg_storage import CorruptStateError
from dsg_storage.core.lock import ENV_VAR, lock_path, repository_lock

TX = "20261121T071530Z-3fa2c1"


@pytest.fixture(autouse=True)
def lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "locks"))
    return tmp_path / "locks"


def test_a_note_outlives_the_process_that_held_the_lock_until_cleared() -> None:
    with repository_lock("tank/a") as held:
        assert held.unfinished_begin() is None
        held.note_begin(TX)
    with repository_lock("tank/a") as held:  # the next step sees it
        assert held.unfinished_begin() == TX
        held.clear()
    with repository_lock("tank/a") as held:
        assert held.unfinished_begin() is None
    assert lock_path("tank/a").read_bytes() == b""


@pytest.mark.parametrize(
    "content",
    [b"begin nonsense\n", b"commit " + TX.encode() + b"\n", b"begin " + TX.encode() + b" " + b"x" * 200, b"\xff\xfe"],
)
def test_a_note_dsg_storage_did_not_write_is_a_clear_error(content: bytes) -> None:
    with repository_lock("tank/a"):
        pass
    lock_path("tank/a").write_bytes(content)
    with repository_lock("tank/a") as held, pytest.raises(CorruptStateError, match="lock file"):
        held.unfinished_begin()
