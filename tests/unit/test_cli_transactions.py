"""The transaction commands in-process on the in-memory pool: ``begin``, ``commit``,
``rollback``/``abort``, ``recover`` (one repository, or a pool), ``snapshot`` and
``status``, each with its ``--dry-run``: exit status, JSON, and what the pool holds."""

from __future__ import annotations

from dsg_storage.names import P_STATE

from .conftest import InProcess

REPO = "tank/data/a"


def commits(cli: InProcess, repo: str = REPO) -> list[str]:
    return sorted(s for s in cli.pool.snaps if s.startswith(f"{repo}@dsg-commit-"))


def test_begin_and_commit_make_a_repository_with_one_commit(cli: InProcess) -> None:
    mnt = cli.tmp / "srv" / "a"
    begun = cli.ok("begin", REPO, "--mountpoint", str(mnt), "--owner", "1000:1000", "--mode", "0750")
    assert begun["pattern"] == "init" and begun["tx"] in begun["path"]
    assert REPO not in cli.pool.datasets  # only a temporary dataset so far
    done = cli.ok("commit", REPO, begun["tx"], "-m", "first")
    assert done["message"] == "first" and done["tx"] == begun["tx"]
    assert commits(cli) == [f"{REPO}@{done['name']}"]
    assert cli.pool.datasets[REPO]["mountpoint"] == str(mnt)
    assert cli.pool.host.owners[str(mnt)] == (1000, 1000, 0o750)


def test_begin_prints_its_transaction_as_text(cli: InProcess) -> None:
    cli.repository()
    out = cli.ok("begin", REPO, text=True)
    tx, pattern, path = out.rstrip("\n").split("\t")
    assert pattern == "sync" and path.endswith(tx)


def test_begin_property_flags_go_with_the_workspace_and_stay_after_commit(cli: InProcess) -> None:
    cli.repository()
    begun = cli.ok("begin", REPO, "--property", "org.example:job=nightly 7", "--property", "org.example:by=a=b")
    workspace = next(name for name in cli.pool.datasets if begun["tx"] in name)
    assert cli.pool.datasets[workspace]["org.example:job"] == "nightly 7"
    cli.ok("commit", REPO, begun["tx"])
    assert (cli.pool.datasets[REPO]["org.example:job"], cli.pool.datasets[REPO]["org.example:by"]) == (
        "nightly 7",
        "a=b",
    )


def test_bad_begin_property_flags_are_exit_2_before_anything_changes(cli: InProcess) -> None:
    cli.repository()
    before = dict(cli.pool.datasets)
    for flags, words in (
        (["--property", "org.example:job"], "NAME=VALUE"),
        (["--property", "org.example:a=1", "--property", "org.example:a=2"], "given twice"),
        (["--property", "NoColon=x"], "not a ZFS user property name"),
        (["--property", "dsg-storage:state=committed"], "dsg-storage's own"),
        (["--property", "com.sun:auto-snapshot=true"], "dsg-storage's own"),
    ):
        for dry in ([], ["--dry-run"]):
            ran = cli("begin", REPO, *flags, *dry)
            assert ran.status == 2 and words in ran.err and "Traceback" not in ran.err, (flags, ran.err)
    assert cli.pool.datasets == before


def test_begin_outside_the_allow_list_is_refused_and_changes_nothing(cli: InProcess) -> None:
    before = dict(cli.pool.datasets)
    ran = cli("begin", "tank/other/a", "--mountpoint", str(cli.tmp / "x"))
    assert ran.status == 3 and ran.err.startswith("dsg-storage: ") and "outside the allowed" in ran.err
    assert cli.pool.datasets == before


def test_a_bad_repository_name_is_usage_before_any_boundary_opens(cli: InProcess) -> None:
    for argv in (["begin", "tank/data/a@x"], ["status", "tank/data/a@x"], ["commit", "tank/data/a@x", "tx"]):
        ran = cli(*argv)
        assert ran.status == 2 and "tank/data/a@x" in ran.err, argv
    assert cli.opened == []  # exit 2 whether ZFS can be loaded or not


def test_a_second_begin_while_one_is_open_is_exit_6(cli: InProcess) -> None:
    cli.repository()
    cli.ok("begin", REPO)
    ran = cli("begin", REPO)
    assert ran.status == 6, ran.err


def test_rollback_and_abort_throw_the_workspace_away(cli: InProcess) -> None:
    cli.repository()
    for command in ("rollback", "abort"):
        tx = cli.ok("begin", REPO)["tx"]
        assert any(tx in name for name in cli.pool.datasets)
        assert cli.ok(command, REPO, tx) == {"tx": tx, "rolled_back": True}
        assert not any(tx in name for name in cli.pool.datasets)
    assert len(commits(cli)) == 1
    ran = cli("rollback", REPO, "20261121T071530Z-3fa2c1")
    assert ran.status == 4 and "no open transaction" in ran.err


def test_commit_on_a_changed_repository_is_a_conflict(cli: InProcess) -> None:
    cli.repository()
    tx = cli.ok("begin", REPO)["tx"]
    cli.pool.changed[f"{REPO}.dsg-old-{tx}"] = ["M\t/late.txt"]  # written after begin
    ran = cli("commit", REPO, tx)
    assert ran.status == 7, ran.err
    assert [p["tx"] for p in cli.ok("status", REPO)["pending"]] == [tx]  # left open, nothing committed


def test_dry_runs_print_steps_and_change_nothing(cli: InProcess) -> None:
    mnt = str(cli.tmp / "srv" / "a")
    before = (dict(cli.pool.datasets), dict(cli.pool.snaps))
    steps = cli.ok("begin", REPO, "--mountpoint", mnt, "--dry-run")
    assert steps and all(isinstance(step, str) for step in steps)
    assert (cli.pool.datasets, cli.pool.snaps) == before
    cli.repository()
    tx = cli.ok("begin", REPO)["tx"]
    before = (dict(cli.pool.datasets), dict(cli.pool.snaps))
    for argv in (["commit", REPO, tx], ["rollback", REPO, tx], ["abort", REPO, tx], ["recover", REPO]):
        assert isinstance(cli.ok(*argv, "--dry-run"), list), argv
    assert cli.ok("snapshot", REPO, "--name", "nightly", "--dry-run") == [f"snapshot {REPO}@nightly"]
    assert (cli.pool.datasets, cli.pool.snaps) == before
    assert cli.ok("recover", REPO, "--dry-run", text=True) == "nothing to do\n"


def test_recover_finishes_an_interrupted_rollback(cli: InProcess) -> None:
    cli.repository()
    tx = cli.ok("begin", REPO)["tx"]
    [workspace] = [name for name in cli.pool.datasets if tx in name]
    cli.pool.datasets[workspace][P_STATE] = "aborting"  # as a rollback killed midway leaves it
    done = cli.ok("recover", REPO)
    assert done["repository"] == REPO and done["actions"]
    assert workspace not in cli.pool.datasets
    assert cli.ok("recover", REPO, text=True) == "nothing to recover\n"


def test_recover_names_a_repository_or_a_pool(cli: InProcess) -> None:
    for argv in (["recover"], ["recover", REPO, "--pool", "tank"]):
        ran = cli(*argv)
        assert ran.status == 2 and "name a repository or give --pool" in ran.err


def test_recover_pool_recovers_every_allowed_repository(cli: InProcess) -> None:
    cli.repository("tank/data/a")
    cli.repository("tank/data/b")
    done = cli.ok("recover", "--pool", "tank")
    assert done["pool"] == "tank"
    assert [r["repository"] for r in done["repositories"]] == ["tank/data/a", "tank/data/b"]
    planned = cli.ok("recover", "--pool", "tank", "--dry-run")
    assert [r["repository"] for r in planned["repositories"]] == ["tank/data/a", "tank/data/b"]
    assert all("steps" in r for r in planned["repositories"])
    cli.env["DSG_STORAGE_ALLOW"] = "tank/elsewhere"
    assert cli.ok("recover", "--pool", "tank", text=True) == "no allowed repository on tank\n"


def test_snapshot_takes_one_now_and_queues_one_while_the_pool_is_away(cli: InProcess) -> None:
    cli.repository()
    taken = cli.ok("snapshot", REPO, "--name", "nightly")
    assert taken["snapshot"] == f"{REPO}@nightly" and f"{REPO}@nightly" in cli.pool.snaps
    del cli.pool.datasets["tank"]  # the pool is exported
    ran = cli("snapshot", REPO, "--name", "later")
    assert ran.status == 1 and "not imported" in ran.err
    queued = cli.ok("snapshot", REPO, "--name", "later", "--queue")["queued"]
    assert (queued["kind"], queued["target"], queued["state"]) == ("snapshot", f"{REPO}@later", "pending")
    assert [i["target"] for i in cli.ok("queue", "list")] == [f"{REPO}@later"]


def test_status_shows_the_repository_and_its_open_transaction(cli: InProcess) -> None:
    cli.repository()
    tx = cli.ok("begin", REPO)["tx"]
    status = cli.ok("status", REPO)
    assert status["exists"] and status["access"] == "live" and status["owner"] == "1000:1000"
    assert [p["tx"] for p in status["pending"]] == [tx]
    assert status["last_commit"]["message"] == "first"
    text = cli.ok("status", REPO, text=True)
    assert f"repository:  {REPO}\n" in text and "pending:     1\n" in text
    assert cli.ok("status", "tank/data/none")["exists"] is False


def test_changing_commands_refuse_offline_access(cli: InProcess) -> None:
    ran = cli("--offline", "begin", REPO)
    assert ran.status == 8 and "read-only" in ran.err
    ran = cli("--offline", "status", REPO)
    assert ran.status == 2 and "status needs a live pool" in ran.err


def test_snapshot_ok_says_no_while_a_transaction_is_in_flight_at_or_under_the_dataset(cli: InProcess) -> None:
    repo = cli.repository()
    assert cli.ok("snapshot-ok", repo) == {"ok": True, "datasets": [repo], "in_flight": []}
    tx = cli.ok("begin", repo)["tx"]
    for asked in ([repo], ["tank/data"]):  # the repository, or a parent a recursive snapshot is taken of
        ran = cli("snapshot-ok", *asked)
        assert ran.status == 6 and ran.json["in_flight"] == [{"repository": repo, "tx": tx, "what": "a transaction"}]
    cli.env["SANOID_TARGETS"] = f"{repo},tank/data/other"  # as sanoid runs its pre_snapshot_script
    assert cli("snapshot-ok").status == 6
    assert "a transaction in flight" in cli("snapshot-ok", text=True).out
    cli.ok("commit", repo, tx)
    assert cli("snapshot-ok").status == 0
    del cli.env["SANOID_TARGETS"]
    cli.env["ZREPL_FS"] = repo  # as zrepl runs a pre-snapshot command hook
    assert cli.ok("snapshot-ok")["datasets"] == [repo]
    del cli.env["ZREPL_FS"]
    assert cli("snapshot-ok").status == 2  # nothing named: usage
