"""What the command line prints as text shows control characters escaped: a commit
message, a recovery note, a bundle's metadata or a file name written by somebody else
never sends escape sequences to the terminal of whoever reads it, and a newline in a
value never makes a line of its own. ``--json`` keeps the values as they are (JSON
escapes control characters itself). The pool is the in-memory fake."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dsg_storage.cli.commands import main
from dsg_storage.names import P_COMMITTED, P_MESSAGE, P_MODE, P_OWNER, P_RECOVERY_NOTE, P_TX
from dsg_storage.present import shown
from tests import craft
from tests.fakes import FakeZfs

HOSTILE = "red \x1b[31mALERT\x1b[0m \x9b2J title \x1b]0;owned\x07 bs\x08\x7f cr\r nl\nfake line\ttab"
RAW = "\x1b\x9b\x07\x08\x7f\r"  # none of these may reach the terminal
COMMIT = "dsg-commit-20261121T101010123Z"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain text, é, 中文, emoji \U0001f600", "plain text, é, 中文, emoji \U0001f600"),
        ("\x1b[31m", "\\x1b[31m"),
        ("\x9b2J", "\\x9b2J"),
        ("a\nb\rc\td", "a\\nb\\rc\\td"),
        ("\x00\x07\x08\x7f\x80\x9f", "\\x00\\x07\\x08\\x7f\\x80\\x9f"),
        ("\u202eevil\u2066\u2028", "\\u202eevil\\u2066\\u2028"),
        ("lone \ud800", "lone \\ud800"),
        ("back\\slash", "back\\slash"),
    ],
)
def test_shown_escapes_every_control_character_visibly(text: str, expected: str) -> None:
    assert shown(text) == expected
    assert shown(text).isprintable()
    shown(text).encode("utf-8")  # printable to any UTF-8 terminal, a lone surrogate too


def assert_escaped(out: str) -> None:
    assert not any(c in out for c in RAW), repr(out)
    assert "\\x1b[31mALERT\\x1b[0m \\x9b2J title \\x1b]0;owned\\x07 bs\\x08\\x7f cr\\r nl\\nfake line\\ttab" in out


@pytest.fixture
def pool(monkeypatch: pytest.MonkeyPatch) -> FakeZfs:
    """tank/a with one commit whose message, and a recovery note, someone else wrote."""
    zfs = FakeZfs()
    zfs.create("tank")
    zfs.create("tank/a", {P_OWNER: "0:0", P_MODE: "0755", P_RECOVERY_NOTE: HOSTILE, "mountpoint": "/srv/a"})
    props = {P_TX: "20261121T101010Z-abcdef", P_COMMITTED: "2026-11-21T10:10:10Z", P_MESSAGE: HOSTILE}
    zfs.snapshot([f"tank/a@{COMMIT}"], props)
    monkeypatch.setattr("dsg_storage.read.reader.open_zfs", lambda allow, **_: zfs)
    monkeypatch.setattr("dsg_storage.zfs.boundary.open_zfs", lambda allow, **_: zfs)
    return zfs


def test_history_shows_a_hostile_commit_message_escaped_on_one_line(
    pool: FakeZfs, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["history", "tank/a"]) == 0
    out = capsys.readouterr().out
    assert_escaped(out)
    assert out.splitlines() == [f"{COMMIT}\t2026-11-21T10:10:10Z\t20261121T101010Z-abcdef\t{shown(HOSTILE)}"]


def test_history_json_keeps_the_message_as_it_is(pool: FakeZfs, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--json", "history", "tank/a"]) == 0
    out = capsys.readouterr().out
    assert not any(c in out for c in RAW)  # JSON's own escapes
    [record] = json.loads(out)
    assert record["message"] == HOSTILE and record["name"] == COMMIT


def test_status_shows_a_hostile_recovery_note_escaped(pool: FakeZfs, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "tank/a"]) == 0
    out = capsys.readouterr().out
    assert_escaped(out)
    assert f"recovery:    {shown(HOSTILE)}" in out.splitlines()
    assert main(["--json", "status", "tank/a"]) == 0
    assert json.loads(capsys.readouterr().out)["recovery_note"] == HOSTILE


def hostile_bundle(tmp_path: Path, name: str = "b.dsgb") -> Path:
    """A sound bundle whose metadata holds what the schema lets through (tab, newline)
    and a commit message (a user property) with escape sequences."""
    snaps = [("s1", 101)]
    meta = craft.metadata("tank/data/src", snaps, created="2026-12-01\nrepository:  tank/forged", owner="1:1\t\n")
    meta["snapshots"][0]["user_props"] = {P_MESSAGE: HOSTILE}
    return craft.repository_bundle(tmp_path / name, "tank/data/src", snaps, meta=meta)


def test_bundle_inspect_shows_the_metadata_escaped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = hostile_bundle(tmp_path)
    assert main(["bundle", "inspect", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if line.startswith("repository:")] == ["repository:  tank/data/src"]
    assert "created:     2026-12-01\\nrepository:  tank/forged by dsg-storage 0.1.0, ZFS 2.3.9-1" in lines
    assert "recorded:    owner 1:1\\t\\n, mode 0750 (shown only: an import applies its own)" in lines
    assert main(["--json", "bundle", "inspect", str(path)]) == 0
    meta = json.loads(capsys.readouterr().out)["metadata"]
    assert meta["created"] == "2026-12-01\nrepository:  tank/forged"
    assert meta["snapshots"][0]["user_props"] == {P_MESSAGE: HOSTILE}


def test_bundle_verify_and_errors_show_the_file_name_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = hostile_bundle(tmp_path, "b\x1b[2J\x9b.dsgb")
    assert main(["bundle", "verify", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{tmp_path}/b\\x1b[2J\\x9b.dsgb: ok (1 streams,") and "\x1b" not in out
    path.write_bytes(b"not a bundle\n")
    assert main(["bundle", "inspect", str(path)]) == 9
    err = capsys.readouterr().err
    assert (
        err
        == f"dsg-storage: {tmp_path}/b\\x1b[2J\\x9b.dsgb is not a dsg-storage bundle: it does not start with DSGBUNDL\n"
    )
    assert main(["bundle", "inspect", str(tmp_path / "gone\x1b[31m.dsgb")]) == 4
    assert capsys.readouterr().err.startswith(f"dsg-storage: {tmp_path}/gone\\x1b[31m.dsgb: ")
