"""The read commands in-process on the in-memory pool: ``repos``, ``history``, ``ls``,
``stat``, ``cat`` (a repository's head is read where the fake host mounted it: a real
directory of the test's), each saying how it read on stderr and in its JSON."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import pytest

from dsg_storage.errors import DsgStorageError

from .conftest import InProcess

REPO = "tank/data/a"


def with_files(cli: InProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    """tank/data/a with files in its (real) mount directory. The reader checks that a
    head's directory is the root of a ZFS filesystem before reading below it, which no
    directory of a test's is: that check is skipped here (tests/zfs/test_offline.py and
    the real pool test it)."""
    monkeypatch.setattr("dsg_storage.hostfs.verify_dataset_root", lambda fd, dataset: None)
    cli.repository(REPO)
    root = cli.tmp / "srv" / "a"
    (root / "sub").mkdir()
    (root / "sub" / "b.txt").write_text("beta\n")
    (root / "a.txt").write_bytes(b"alpha\x00\xff")


def test_repos_lists_the_repositories_under_a_dataset(cli: InProcess) -> None:
    cli.repository("tank/data/a")
    cli.repository("tank/data/b")
    ran = cli("repos", "tank/data")
    assert ran.status == 0 and ran.err.startswith("access: live")
    found = ran.json
    assert [r["name"] for r in found] == ["tank/data/a", "tank/data/b"]
    assert all(r["access"] == "live" and r["commits"] == 1 for r in found)
    text = cli.ok("repos", "tank/data", text=True)
    assert text.startswith(f"tank/data/a\t{cli.tmp / 'srv' / 'a'}\t1 commits\t")


def test_history_lists_the_commits_oldest_first(cli: InProcess) -> None:
    cli.repository()
    tx = cli.ok("begin", REPO)["tx"]
    cli.ok("commit", REPO, tx, "-m", "second")
    history = cli.ok("history", REPO)
    assert [c["message"] for c in history] == ["first", "second"]
    assert all(c["access"] == "live" and "freshness" in c for c in history)
    lines = cli.ok("history", REPO, text=True).splitlines()
    assert len(lines) == 2 and lines[1].endswith("\tsecond") and tx in lines[1]


def test_ls_and_stat_show_the_heads_files(cli: InProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    with_files(cli, monkeypatch)
    entries = cli.ok("ls", REPO)
    assert [(e["path"], e["type"]) for e in entries] == [
        ("", "dir"),
        ("a.txt", "file"),
        ("sub", "dir"),
        ("sub/b.txt", "file"),
    ]
    assert all(e["access"] == "live" for e in entries)
    entry = cli.ok("stat", REPO, "sub/b.txt")
    assert (entry["path"], entry["size"], entry["type"]) == ("sub/b.txt", 5, "file")
    assert cli.ok("ls", REPO, "sub", text=True).splitlines()[-1].endswith("\t5\tsub/b.txt")
    assert entry["xattrs"] == {} and entry["xattrs_omitted"] == 0
    ran = cli("stat", REPO, "nope.txt")
    assert ran.status == 4 and ran.err == "access: live\ndsg-storage: nope.txt: no such file in the repository\n"


def test_cat_writes_the_bytes_or_their_json(cli: InProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    with_files(cli, monkeypatch)
    data = b"alpha\x00\xff"
    as_json = cli.ok("cat", REPO, "a.txt")
    assert as_json["size"] == len(data) and as_json["sha256"] == hashlib.sha256(data).hexdigest()
    assert base64.b64decode(as_json["content_base64"]) == data and as_json["access"] == "live"
    cli.capsys.readouterr()
    from dsg_storage.cli.commands import main

    assert main(["cat", REPO, "sub/b.txt"], zfs=cli.boundary, environ=dict(cli.env)) == 0
    assert cli.capsys.readouterr().out == "beta\n"


def test_reads_record_to_the_cache_and_cached_needs_offline(cli: InProcess) -> None:
    cli.repository()
    cache = str(cli.tmp / "cache" / "reads.sqlite")
    (cli.tmp / "cache").mkdir(mode=0o700)
    cli.ok("--cache", cache, "history", REPO)
    stats = cli.ok("--cache", cache, "cache", "stats")
    assert stats["entries"] == {"history": 1}
    ran = cli("--cache", cache, "--cached", "history", REPO)
    assert ran.status == 2 and "go with --offline" in ran.err
    ran = cli("--cached", "--offline", "history", REPO)
    assert ran.status == 2 and "--cached needs a read cache" in ran.err


def test_stat_shows_a_files_user_xattrs_in_base64(cli: InProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    with_files(cli, monkeypatch)
    path = cli.tmp / "srv" / "a" / "a.txt"
    os.setxattr(path, "user.checksum", b"sha256:\x00\xff")
    os.setxattr(path, "user.origin", b"")
    entry = cli.ok("stat", REPO, "a.txt")
    assert entry["xattrs"] == {"user.checksum": base64.b64encode(b"sha256:\x00\xff").decode(), "user.origin": ""}
    listed = {e["path"]: e["xattrs"] for e in cli.ok("ls", REPO)}
    assert listed["a.txt"] == entry["xattrs"] and listed["sub/b.txt"] == {}


def test_key_files_name_their_encryption_root_or_every_one(cli: InProcess, tmp_path: Path) -> None:
    from dsg_storage.cli.reads import _key_files

    (tmp_path / "k").write_bytes(b"one passphrase\n")
    (tmp_path / "a=b").write_bytes(b"raw")
    assert _key_files([f"tank/secret={tmp_path / 'k'}", str(tmp_path / "a=b")]) == {
        "tank/secret": b"one passphrase\n",
        "": b"raw",
    }
    with pytest.raises(DsgStorageError, match="two keys for every encryption root"):
        _key_files([str(tmp_path / "k"), str(tmp_path / "k")])
    ran = cli("--key-file", str(tmp_path / "k"), "ls", REPO)
    assert ran.status != 0 and "--key-file go with --userland" in ran.err


def test_a_force_before_the_command_is_userlands_and_refused_without_it(cli: InProcess, tmp_path: Path) -> None:
    """``--force`` before the command is --userland's: never taken for bundle export's
    or lock's own ``--force`` (which comes after the command), nor dropped silently."""
    cli.repository()
    out = tmp_path / "b.dsgb"
    ran = cli("--force", "bundle", "export", REPO, "-o", str(out))
    assert ran.status == 2 and "go with --userland" in ran.err and not out.exists()
    ran = cli("--force", "ls", REPO)
    assert ran.status == 2 and "go with --userland" in ran.err
