"""``bundle export|inspect|verify|import``, ``lock`` and ``verify`` in-process on the
in-memory pool. The fake pool sends and receives no stream, so what needs one (an
export's streams, an import's receive) is tested on a real pool (tests/zfs/test_bundles*);
here: crafted bundles read, planned and refused, and lock files written and compared."""

from __future__ import annotations

import json
from pathlib import Path

from tests import craft

from .conftest import InProcess

REPO = "tank/data/a"


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
