"""``bundle export|inspect|verify|import``, ``lock`` and ``verify`` in-process on the
in-memory pool: crafted bundles read, planned and refused; bundles exported from a
repository and imported (full, then incremental) through the fake pool's own streams
(``tests/fakes.py``: a BEGIN and an END record, no data), with what the pool holds
afterwards; lock files written and compared. What ZFS itself does with a stream is
tested on a real pool (tests/zfs/test_bundles*)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from dsg_storage.errors import DatasetExistsError, ZfsError
from dsg_storage.names import P_IMPORT, P_MODE, P_OWNER, P_REPO
from tests import craft

from ..fakes import FakeZfs
from .conftest import InProcess

REPO = "tank/data/a"
INTO = "tank/data/b"
TX = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{6}")


def test_bundle_inspect_and_verify_read_a_bundle(cli: InProcess) -> None:
    path = str(craft.repository_bundle(cli.tmp / "b.dsgb"))
    inspected = cli.ok("bundle", "inspect", path)
    assert inspected["file"] == path and inspected["format_version"] == 1
    assert [s["name"] for s in inspected["metadata"]["snapshots"]] == ["s1", "s2"]
    assert [p["snapshot"] for p in inspected["parts"]] == ["s1", "s2"]
    verified = cli.ok("bundle", "verify", path)
    assert verified["ok"] is True and verified["signer"] is None and "sha256" in verified
    text = cli.ok("bundle", "verify", path, text=True)
    assert text.startswith(f"{path}: ok (2 streams, ") and "signature: " in text
    ran = cli("bundle", "verify", path, "--require-signature")
    assert ran.status == 2 and "needs an allowed-signers file" in ran.err
    signers = cli.tmp / "allowed_signers"
    signers.write_text("")
    ran = cli("bundle", "verify", path, "--require-signature", "--allowed-signers", str(signers))
    assert ran.status == 9, ran.err  # unsigned


def test_bundle_import_dry_run_prints_the_plan_the_import_would_run(cli: InProcess) -> None:
    path = str(craft.repository_bundle(cli.tmp / "b.dsgb"))
    before = (dict(cli.pool.datasets), dict(cli.pool.snaps))
    steps = cli.ok("bundle", "import", path, "--into", REPO, "--mountpoint", str(cli.tmp / "a"), "--dry-run")
    assert steps[0].startswith(f"import (full) into {REPO}: transaction ")
    assert steps[1].strip().startswith("receive 2 snapshot(s) from ") and steps[1].endswith(": s1, s2")
    assert steps[-2].strip().startswith(f"rename {REPO}.dsg-recv-") and steps[-2].endswith("<- the commit point")
    assert (cli.pool.datasets, cli.pool.snaps) == before
    incremental = craft.repository_bundle(cli.tmp / "i.dsgb", snapshots=[("s3", 103)], base=("s2", 102))
    ran = cli("bundle", "import", str(incremental), "--into", REPO, "--dry-run")
    assert ran.status == 4 and "applies onto its base s2" in ran.err  # no repository to apply it onto
    assert (cli.pool.datasets, cli.pool.snaps) == before


def test_bundle_import_outside_the_allow_list_is_refused_and_audited(cli: InProcess) -> None:
    path = str(craft.repository_bundle(cli.tmp / "b.dsgb"))
    log = cli.tmp / "audit.log"
    ran = cli(
        "bundle", "import", path, "--into", "tank/other/a", "--mountpoint", str(cli.tmp / "x"), "--audit-log", str(log)
    )
    assert ran.status == 3 and "tank/other/a" in ran.err
    assert not any(name.startswith("tank/other") for name in cli.pool.datasets)
    [line] = [json.loads(text) for text in log.read_text().splitlines()]
    assert (line["action"], line["into"]) == ("import", "tank/other/a") and line["result"] != "ok"


def test_bundle_import_of_a_damaged_file_is_exit_9(cli: InProcess) -> None:
    path = cli.tmp / "b.dsgb"
    path.write_bytes(b"not a bundle\n")
    ran = cli("bundle", "import", str(path), "--into", REPO, "--audit-log", str(cli.tmp / "audit.log"))
    assert ran.status == 9 and "is not a dsg-storage bundle" in ran.err
    assert REPO not in cli.pool.datasets


def test_bundle_export_of_a_missing_repository_writes_nothing(cli: InProcess) -> None:
    out = cli.tmp / "out.dsgb"
    ran = cli("bundle", "export", "tank/data/none", "-o", str(out), "--audit-log", str(cli.tmp / "audit.log"))
    assert ran.status == 4, ran.err
    assert not out.exists()


def test_lock_writes_the_commits_and_verify_compares_them(cli: InProcess) -> None:
    cli.repository()
    lock = str(cli.tmp / "a.lock")
    written = cli.ok("lock", REPO, "-o", lock)
    assert written == {"file": lock, "repository": REPO, "commits": 1, "signature_file": None}
    assert cli.ok("lock", REPO, text=True) == Path(lock).read_text()  # no -o: the same to stdout
    matched = cli.ok("verify", "--lock", lock, REPO)
    assert matched["matches"] is True and matched["missing"] == matched["extra"] == []
    tx = cli.ok("begin", REPO)["tx"]
    cli.ok("commit", REPO, tx)
    ran = cli("verify", "--lock", lock, REPO)
    assert ran.status == 10 and ran.json["matches"] is False and len(ran.json["extra"]) == 1
    text = cli("verify", "--lock", lock, REPO, text=True).out
    assert text.startswith(f"{REPO} does not match {lock}:\n  ")
    ran = cli("verify", "--lock", str(cli.tmp / "none.lock"), REPO)
    assert ran.status == 4


# ------------------------------------------------- export, and import through the fake's streams
def commits(cli: InProcess, repo: str, *messages: str) -> list[str]:
    """``repo``'s commit snapshots (short names) after committing once per message."""
    for message in messages:
        cli.ok("commit", repo, cli.ok("begin", repo)["tx"], "-m", message)
    return [s.short_name for s in cli.pool.snapshots(repo) if s.short_name.startswith("dsg-commit-")]


def guids(cli: InProcess, repo: str) -> dict[str, int]:
    return {s.short_name: s.guid for s in cli.pool.snapshots(repo)}


def state(cli: InProcess) -> Any:
    """What an import that changes nothing leaves as it was."""
    return copy.deepcopy((cli.pool.datasets, cli.pool.snaps, cli.pool.host.table, cli.pool.host.owners))


def export(cli: InProcess, name: str, *argv: str, repo: str = REPO) -> tuple[str, Any]:
    path = str(cli.tmp / name)
    return path, cli.ok("bundle", "export", repo, "-o", path, *argv, "--audit-log", str(cli.tmp / "audit.log"))


def import_(cli: InProcess, path: str, *argv: str) -> Any:
    return cli("bundle", "import", path, "--into", INTO, *argv, "--audit-log", str(cli.tmp / "audit.log"))


def plain(steps: list[str]) -> list[str]:
    """A dry run's action lines (or an import's steps) without indent, marker and tx ids."""
    return [TX.sub("TX", line.strip().removesuffix("<- the commit point").rstrip()) for line in steps]


def test_bundle_export_writes_every_commit_as_the_pool_sends_it(cli: InProcess) -> None:
    cli.repository()
    snaps = commits(cli, REPO, "second")
    before = state(cli)
    path, exported = export(cli, "full.dsgb")
    assert (exported["file"], exported["sha256"], exported["signature_file"]) == (path, None, None)
    meta = exported["metadata"]
    assert (meta["type"], meta["repository"], meta["base"]) == ("full", REPO, None)
    assert (meta["owner"], meta["mode"]) == ("1000:1000", "0750")  # recorded, shown only
    assert [(s["name"], int(s["guid"])) for s in meta["snapshots"]] == [(n, guids(cli, REPO)[n]) for n in snaps]
    assert [s["user_props"]["dsg-storage:message"] for s in meta["snapshots"]] == ["first", "second"]
    parts = exported["parts"]
    assert [(p["snapshot"], p["from"]) for p in parts] == [(snaps[0], None), (snaps[1], snaps[0])]
    assert parts[1]["from_guid"] == meta["snapshots"][0]["guid"]
    assert exported["file_size"] == os.path.getsize(path) and exported["stream_bytes"] == sum(p["size"] for p in parts)
    assert state(cli) == before  # an export changes nothing
    assert cli.ok("bundle", "verify", path)["ok"] is True  # the project's own reader accepts each stream
    audited = json.loads((cli.tmp / "audit.log").read_text().splitlines()[-1])
    assert (audited["action"], audited["result"], audited["snapshots"]) == ("export", "ok", snaps)
    text = cli.ok(
        "bundle", "export", REPO, "-o", str(cli.tmp / "t.dsgb"), "--audit-log", str(cli.tmp / "t.log"), text=True
    )
    assert text.startswith("bundle:      format 1, full, ") and f"{snaps[1]}\tguid {guids(cli, REPO)[snaps[1]]}" in text


def test_bundle_export_since_a_commit_carries_only_the_later_ones(cli: InProcess) -> None:
    cli.repository()
    snaps = commits(cli, REPO, "second", "third")
    _, exported = export(cli, "week.dsgb", "--since", snaps[0])
    meta = exported["metadata"]
    assert meta["type"] == "incremental"
    assert meta["base"] == {"name": snaps[0], "guid": str(guids(cli, REPO)[snaps[0]])}
    assert [s["name"] for s in meta["snapshots"]] == snaps[1:]
    first, second = exported["parts"]
    assert (first["from"], first["from_guid"]) == (snaps[0], meta["base"]["guid"])
    assert (second["from"], second["from_guid"]) == (snaps[1], meta["snapshots"][0]["guid"])
    _, upto = export(cli, "upto.dsgb", "--since", snaps[0], "--snapshot", snaps[1])
    assert [s["name"] for s in upto["metadata"]["snapshots"]] == [snaps[1]]
    ran = cli("bundle", "export", REPO, "-o", str(cli.tmp / "none.dsgb"), "--since", snaps[2])
    assert ran.status == 2 and "is not older than" in ran.err
    assert not (cli.tmp / "none.dsgb").exists()


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="signing needs ssh-keygen")
def test_a_signed_export_names_its_digest_and_signature_file(cli: InProcess) -> None:
    key = cli.tmp / "alice_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "alice", "-f", str(key)], check=True)
    public = key.with_suffix(".pub").read_text().split()
    signers = cli.tmp / "allowed_signers"
    signers.write_text(f'alice@field-office namespaces="dsg-storage" {public[0]} {public[1]}\n')
    cli.repository()
    path, exported = export(cli, "signed.dsgb", "--sign", str(key))
    assert exported["signature_file"] == path + ".sig" and Path(path + ".sig").exists()
    assert exported["sha256"] == hashlib.sha256(Path(path).read_bytes()).hexdigest()
    verified = cli.ok("bundle", "verify", path, "--allowed-signers", str(signers), "--require-signature")
    assert verified["signer"] == "alice@field-office" and verified["sha256"] == exported["sha256"]


def test_a_full_then_an_incremental_bundle_build_the_same_history_elsewhere(cli: InProcess) -> None:
    cli.repository()
    snaps = commits(cli, REPO, "second")
    full, _ = export(cli, "full.dsgb")
    mountpoint = str(cli.tmp / "b")
    ran = import_(cli, full, "--mountpoint", mountpoint, "--owner", "1234:5678", "--mode", "0700")
    assert ran.status == 0, ran.err
    result = ran.json
    assert (result["kind"], result["repository"], result["snapshots"]) == ("full", INTO, snaps)
    assert (result["mountpoint"], result["owner"], result["mode"]) == (mountpoint, "1234:5678", "0700")
    steps = plain(result["steps"])
    assert steps[0] == f"receive 2 snapshot(s) from {full} into {INTO}.dsg-recv-TX: {', '.join(snaps)}"
    assert f"rename {INTO}.dsg-recv-TX to {INTO}" in steps and steps[-1].endswith("(zoned cleared)")
    b = cli.pool.datasets[INTO]
    assert (b["setuid"], b["devices"], b["mountpoint"], b[P_REPO]) == ("off", "off", mountpoint, INTO)
    assert (b[P_OWNER], b[P_MODE]) == ("1234:5678", "0700") and "zoned" not in b
    assert not [name for name in cli.pool.datasets if ".dsg-recv-" in name]
    assert list(guids(cli, INTO)) == snaps and guids(cli, INTO) == guids(cli, REPO)  # the sender's GUIDs
    received = {s.short_name: s.user_props for s in cli.pool.snapshots(INTO)}
    assert received[snaps[1]]["dsg-storage:message"] == "second"  # the bundle's, set after the receive
    assert cli.pool.host.owners[mountpoint] == (1234, 5678, 0o700)
    assert cli.pool.host.table[INTO] == [mountpoint]

    later = commits(cli, REPO, "third")
    week, _ = export(cli, "week.dsgb", "--since", snaps[-1])
    ran = import_(cli, week)
    assert ran.status == 0, ran.err
    result = ran.json
    assert (result["kind"], result["snapshots"], result["owner"], result["mode"]) == (
        "incremental",
        later[-1:],
        "1234:5678",  # an incremental import keeps the repository's own
        "0700",
    )
    assert plain(result["steps"])[:5] == [
        f"unmount {INTO}",
        f"check {INTO} has no changes since {INTO}@{snaps[-1]}",
        f"set {P_IMPORT}=TX {snaps[-1]}, zoned=on on {INTO} (zfs set -u)",
        f"roll {INTO} back to its latest snapshot",
        f"receive 1 snapshot(s) from {week} into {INTO}: {later[-1]}",
    ]
    assert guids(cli, INTO) == {n: g for n, g in guids(cli, REPO).items() if n in later}
    b = cli.pool.datasets[INTO]
    assert P_IMPORT not in b and "zoned" not in b and (b["setuid"], b["devices"]) == ("off", "off")
    assert cli.pool.host.table[INTO] == [mountpoint]  # placed again
    audited = [json.loads(line) for line in (cli.tmp / "audit.log").read_text().splitlines()]
    assert [(a["action"], a["result"]) for a in audited] == [("export", "ok"), ("import", "ok")] * 2


def test_a_dry_run_prints_the_steps_the_import_then_runs(cli: InProcess) -> None:
    cli.repository()
    snaps = commits(cli, REPO, "second")
    old, _ = export(cli, "old.dsgb", "--snapshot", snaps[0])
    week, _ = export(cli, "week.dsgb", "--since", snaps[0])
    full = ["--mountpoint", str(cli.tmp / "b"), "--owner", "1234:5678"]
    for path, given, kind in ((old, full, "full"), (week, [], "incremental")):
        before = state(cli)
        dry = import_(cli, path, *given, "--dry-run")
        assert dry.status == 0, dry.err
        assert state(cli) == before  # a dry run changes nothing
        assert dry.json[0].startswith(f"import ({kind}) into {INTO}: transaction ")
        assert dry.json[-1].startswith(f"  then place {INTO}: mounted where it records, owner 1234:5678")
        actions = plain(dry.json[1:-1])
        ran = import_(cli, path, *given)
        assert ran.status == 0, ran.err
        assert len(actions) >= 4 and plain(ran.json["steps"])[: len(actions)] == actions
    assert guids(cli, INTO) == guids(cli, REPO)


def test_an_incremental_bundle_onto_the_wrong_base_is_refused_and_changes_nothing(cli: InProcess) -> None:
    cli.repository()
    snaps = commits(cli, REPO, "second", "third")
    full, _ = export(cli, "full.dsgb", "--snapshot", snaps[1])
    cli.ok("bundle", "import", full, "--into", INTO, "--mountpoint", str(cli.tmp / "b"), "--owner", "1:1")
    stale, _ = export(cli, "stale.dsgb", "--since", snaps[0])  # carries snaps[1] again, from snaps[0]
    before = state(cli)
    ran = import_(cli, stale)
    assert ran.status == 9, ran.err
    assert f"wrong base: the bundle applies onto {snaps[0]}" in ran.err and "is there but is not the latest" in ran.err
    assert state(cli) == before
    commits(cli, INTO, "local")  # b moves on by itself: the next bundle from a no longer applies
    week, _ = export(cli, "week.dsgb", "--since", snaps[1])
    before = state(cli)
    ran = import_(cli, week)
    assert ran.status == 9 and f"applies onto {snaps[1]}" in ran.err
    assert state(cli) == before


def test_an_incremental_bundle_onto_a_changed_repository_is_refused_and_changes_nothing(cli: InProcess) -> None:
    cli.repository()
    snaps = commits(cli, REPO, "second")
    full, _ = export(cli, "full.dsgb", "--snapshot", snaps[0])
    cli.ok("bundle", "import", full, "--into", INTO, "--mountpoint", str(cli.tmp / "b"), "--owner", "1:1")
    week, _ = export(cli, "week.dsgb", "--since", snaps[0])
    cli.pool.changed[INTO] = ["M\t/", "M\t/data.csv"]  # written since the base
    before = state(cli)
    ran = import_(cli, week)
    assert ran.status == 7, ran.err
    assert "data.csv" in ran.err and f"{INTO} has changes since {snaps[0]}" in ran.err
    assert state(cli) == before  # unmounted for the check, placed again
    audited = json.loads((cli.tmp / "audit.log").read_text().splitlines()[-1])
    assert (audited["action"], audited["into"]) == ("import", INTO) and audited["result"] != "ok"


# ------------------------------------------------------------ the fake pool's streams themselves
def sent(pool: FakeZfs, snapshot: str, base: str | None, at: Path) -> int:
    """``snapshot``'s stream (from ``base``) written after 7 bytes of ``at``: a descriptor
    at the stream's start."""
    fd = os.open(at, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, b"leading")
    pool.send_to(fd, snapshot, base)
    os.lseek(fd, 7, os.SEEK_SET)
    return fd


def test_the_fake_pool_receives_one_stream_and_refuses_what_a_pool_refuses(tmp_path: Path) -> None:
    pool = FakeZfs()
    pool.datasets.update({"tank": {}, "tank/a": {}})
    pool.snapshot(["tank/a@s1"])
    pool.snapshot(["tank/a@s2"])
    guid = {s.short_name: s.guid for s in pool.snapshots("tank/a")}
    fd = sent(pool, "tank/a@s1", None, tmp_path / "s1")
    pool.receive_from(fd, "tank/b@s1")
    assert os.lseek(fd, 0, os.SEEK_CUR) == os.fstat(fd).st_size  # at the stream's end
    assert [(s.short_name, s.guid) for s in pool.snapshots("tank/b")] == [("s1", guid["s1"])]
    assert pool.get_props("tank/b@s1", ["guid"]) == {"guid": str(guid["s1"])}
    pool.snapshot(["tank/a@s3"])
    before = copy.deepcopy((pool.datasets, pool.snaps))
    with pytest.raises(DatasetExistsError):  # a full stream onto an existing dataset
        pool.receive_from(sent(pool, "tank/a@s1", None, tmp_path / "s1"), "tank/b@s9")
    with pytest.raises(ZfsError, match=f"applies onto guid {guid['s2']}"):  # b's latest is s1
        pool.receive_from(sent(pool, "tank/a@s3", "tank/a@s2", tmp_path / "s3"), "tank/b@s3")
    with pytest.raises(ZfsError, match="not an earlier snapshot"):
        pool.send_to(fd, "tank/a@s1", "tank/a@s2")
    damaged = sent(pool, "tank/a@s2", "tank/a@s1", tmp_path / "s2")
    os.ftruncate(damaged, os.fstat(damaged).st_size - 1)  # cut short
    with pytest.raises(ZfsError, match="cut short"):
        pool.receive_from(damaged, "tank/b@s2")
    assert copy.deepcopy((pool.datasets, pool.snaps)) == before  # nothing refused changed anything
    pool.receive_from(sent(pool, "tank/a@s2", "tank/a@s1", tmp_path / "s2"), "tank/b@s2")
    assert [s.guid for s in pool.snapshots("tank/b")] == [guid["s1"], guid["s2"]]
