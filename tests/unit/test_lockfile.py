"""Lock files: round trips, exact GUIDs, comparison with a repository, clear errors."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

import dsg_storage
from dsg_storage import LockFileError
from dsg_storage.transfer import lockfile as lf
from dsg_storage.transfer.lockfile import LockedCommit

A = LockedCommit("dsg-commit-20261121T101010123Z", 11)
B = LockedCommit("dsg-commit-20261122T101010123Z", 2**64 - 1)
C = LockedCommit("dsg-commit-20261123T101010123Z", 2**53 + 1)
LOCK = lf.LockFile("tank/data/survey", "2026-11-23T10:10:10Z", (A, B, C))


def test_round_trip() -> None:
    assert lf.loads(lf.dumps(LOCK)) == LOCK
    made = lf.make("tank/a", [A, B], now=datetime(2026, 11, 21, 10, 10, 10, 5, tzinfo=UTC))
    assert made.created == "2026-11-21T10:10:10Z" and made.commits == (A, B)
    assert made.dsg_storage_version == dsg_storage.__version__
    assert lf.loads(lf.dumps(made)) == made


def test_guids_are_exact_decimal_strings() -> None:
    doc = json.loads(lf.dumps(LOCK))
    assert doc["format"] == "dsg-storage-lock" and doc["format_version"] == 1
    assert [c["guid"] for c in doc["commits"]] == ["11", "18446744073709551615", "9007199254740993"]
    assert lf.loads(lf.dumps(LOCK)).commits[1].guid == 2**64 - 1


def test_a_guid_written_as_a_number_is_accepted() -> None:
    doc = json.loads(lf.dumps(LOCK))
    doc["commits"][0]["guid"] = 11
    assert lf.loads(json.dumps(doc)).commits[0] == A


def test_write_and_read(tmp_path: Path) -> None:
    path = tmp_path / "survey.lock"
    lf.write(path, LOCK)
    assert lf.read(path) == LOCK
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    os.chmod(path, 0o600)
    changed = lf.LockFile("tank/data/survey", "2026-11-24T00:00:00Z", (A,))
    lf.write(path, changed)
    assert lf.read(path) == changed and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["survey.lock"]  # no temporary file left


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "survey.lock"
    lf.write(path, LOCK)

    def fail(fd: int) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="disk gone"):
        lf.write(path, lf.LockFile("tank/x", "2026-11-24T00:00:00Z", ()))
    monkeypatch.undo()
    assert lf.read(path) == LOCK
    assert sorted(p.name for p in tmp_path.iterdir()) == ["survey.lock"]


def test_read_of_a_missing_or_binary_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        lf.read(tmp_path / "none.lock")
    (tmp_path / "bin.lock").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(LockFileError, match="not UTF-8"):
        lf.read(tmp_path / "bin.lock")


# ---------------------------------------------------------------------------- compare
def test_compare_match() -> None:
    diff = lf.compare(LOCK, [A, B, C])
    assert diff.matches and diff.describe() == []


def test_compare_missing_extra_changed() -> None:
    D = LockedCommit("dsg-commit-20261124T101010123Z", 44)
    diff = lf.compare(LOCK, [A, LockedCommit(B.name, 7), D])
    assert not diff.matches and not diff.reordered
    assert diff.missing == (C,) and diff.extra == (D,) and diff.changed == ((B, LockedCommit(B.name, 7)),)
    assert diff.describe() == [
        f"missing: {C.name} (guid {C.guid})",
        f"extra: {D.name} (guid 44)",
        f"changed: {B.name}: guid 18446744073709551615 in the lock, 7 now",
    ]


def test_compare_reordered() -> None:
    diff = lf.compare(LOCK, [B, A, C])
    assert not diff.matches and diff.reordered
    assert (diff.missing, diff.extra, diff.changed) == ((), (), ())
    assert diff.describe() == ["reordered: the commits both hold are in another order than in the lock"]


def test_order_is_judged_on_the_commits_both_hold() -> None:
    assert not lf.compare(LOCK, [A, C]).reordered  # B missing; A before C still


# ---------------------------------------------------------------------------- errors
def doc_with(**changes: object) -> str:
    doc = json.loads(lf.dumps(LOCK))
    for key, value in changes.items():
        if value is None:
            del doc[key]
        else:
            doc[key] = value
    return json.dumps(doc)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", r"x\.lock is not valid JSON: .* at line 1, column 2"),
        ("", "is not valid JSON"),
        ("[1, 2]", 'is not a dsg-storage lock file \\(it lacks "format": "dsg-storage-lock"\\)'),
        (doc_with(format="something-else"), "is not a dsg-storage lock file"),
        (
            doc_with(format_version=2),
            "is lock file format version 2, made by a newer dsg-storage; this one reads format 1",
        ),
        (doc_with(format_version="1"), "has no valid 'format_version'"),
        (doc_with(format_version=None), "has no valid 'format_version'"),
        (doc_with(repository=None), "has no 'repository'"),
        (doc_with(repository=3), "has an invalid 'repository'"),
        (doc_with(created="yesterday"), "invalid 'created' time 'yesterday'"),
        (doc_with(commits=None), "has no 'commits' list"),
        (doc_with(commits=["a"]), "commit 1 is not an object"),
        (doc_with(commits=[{"guid": "1"}]), "commit 1 has no 'name'"),
        (doc_with(commits=[{"name": "a"}]), r"commit 1 \(a\) has no valid 'guid'"),
        (doc_with(commits=[{"name": "a", "guid": "-1"}]), "has no valid 'guid'"),
        (doc_with(commits=[{"name": "a", "guid": str(2**64)}]), "has no valid 'guid'"),
        (doc_with(commits=[{"name": "a", "guid": 1.5}]), "has no valid 'guid'"),
        (doc_with(commits=[{"name": "a", "guid": "1"}, {"name": "a", "guid": "2"}]), "lists commit a twice"),
        (doc_with(repository="tank/a\n"), "has an invalid 'repository'"),
        (doc_with(repository="tank/\x1b[31m"), "has an invalid 'repository'"),
        (doc_with(commits=[{"name": "a\n", "guid": "1"}]), "commit 1 has a 'name' that is no snapshot name"),
        (doc_with(commits=[{"name": "a\x9b2J", "guid": "1"}]), r"no snapshot name: 'a\\x9b2J'"),
        (doc_with(commits=[{"name": "a@b", "guid": "1"}]), "no snapshot name"),
        (doc_with(commits=[{"name": "x" * 256, "guid": "1"}]), "no snapshot name"),
        (doc_with(commits=[{"name": "a", "guid": "\u0661"}]), "has no valid 'guid'"),  # an Arabic-Indic 1
        (doc_with(commits=[{"name": "a", "guid": "1\n"}]), "has no valid 'guid'"),
        (doc_with(commits=[{"name": "a", "guid": 10**30}]), "has no valid 'guid'"),
        (doc_with(format_version=10**30), "format version 1000000000000000000000000000000, made by a newer"),
        ('{"format": "dsg-storage-lock", "format_version": 1' + "0" * 5000 + "}", "cannot be read: it is not valid"),
    ],
)
def test_loads_errors_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(LockFileError, match=message):
        lf.loads(text, source="x.lock")


def test_a_newer_version_hints_at_an_upgrade() -> None:
    with pytest.raises(LockFileError) as caught:
        lf.loads(doc_with(format_version=7))
    assert caught.value.hint == "read it with a newer dsg-storage" and isinstance(caught.value, ValueError)
    assert str(caught.value).startswith("lock file is lock file format version 7")


@pytest.mark.parametrize("where", ["repository", "created", "name", "guid", "key", "dsg_storage_version"])
def test_a_lone_surrogate_anywhere_is_a_lock_file_error(tmp_path: Path, where: str) -> None:
    """JSON's \\ud800 escape makes a string Python keeps but cannot encode: refused as the
    file is read, not when its text is printed later."""
    doc = json.loads(lf.dumps(LOCK))
    marker = "@@surrogate@@"
    if where in ("name", "guid"):
        doc["commits"][1][where] = marker
    elif where == "key":
        doc["commits"][1][marker] = 1
    else:
        doc[where] = marker
    path = tmp_path / "x.lock"
    path.write_text(json.dumps(doc).replace(f'"{marker}"', '"a\\ud800"'))
    assert "\\ud800" in path.read_text()
    with pytest.raises(LockFileError, match="lone surrogate"):
        lf.read(path)


def test_a_python_string_with_a_surrogate_is_a_lock_file_error() -> None:
    with pytest.raises(LockFileError, match="lone surrogate"):
        lf.loads(lf.dumps(LOCK).replace("tank/data/survey", "tank/\ud800"))
