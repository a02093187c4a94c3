"""The queue and the commands for running dsg-storage for years, in-process on the
in-memory pool: ``queue list|stats|flush|drop``, ``gc``, ``prune``, ``keep``,
``metrics``, ``install-hooks``, ``cache stats|clear`` and ``demo``'s allow-list rule."""

from __future__ import annotations

from dsg_storage import Queue

from .conftest import InProcess

REPO = "tank/data/a"


def queued(cli: InProcess, *targets: str) -> list[int]:
    with Queue(cli.env["DSG_STORAGE_QUEUE"]) as queue:
        return [queue.add_snapshot(t).id for t in targets]


def test_queue_list_stats_and_drop(cli: InProcess) -> None:
    first, second = queued(cli, f"{REPO}@one", f"{REPO}@two")
    listed = cli.ok("queue", "list")
    assert [(i["id"], i["target"], i["state"]) for i in listed] == [
        (first, f"{REPO}@one", "pending"),
        (second, f"{REPO}@two", "pending"),
    ]
    stats = cli.ok("queue", "stats")
    assert stats["counts"] == {"pending": 2, "done": 0, "dead": 0} and stats["max_pending"] == 10_000
    cli.env["DSG_STORAGE_QUEUE_MAX_PENDING"] = "5"
    text = cli.ok("queue", "stats", text=True)
    assert text.startswith("pending=2 done=0 dead=0 oldest_pending_age=") and "max_pending=5 free=3" in text
    assert cli.ok("queue", "drop", str(first))["dropped"]["id"] == first
    assert [i["id"] for i in cli.ok("queue", "list")] == [second]
    assert cli("queue", "drop", str(first)).status == 4


def test_queue_flush_and_gc_take_the_snapshots_when_the_pool_is_back(cli: InProcess) -> None:
    cli.repository()
    queued(cli, f"{REPO}@one")
    assert cli.ok("queue", "flush", "--dry-run", text=True) == f"would snapshot {REPO}@one (item 1)\n"
    assert f"{REPO}@one" not in cli.pool.snaps
    assert cli.ok("queue", "flush", "--pool", "other") == []  # another pool's items only
    [item] = cli.ok("queue", "flush")
    assert item["state"] == "done" and f"{REPO}@one" in cli.pool.snaps
    queued(cli, f"{REPO}@two")
    assert [s["step"] for s in cli.ok("gc", "--dry-run")] == [f"snapshot {REPO}@two"]
    [item] = cli.ok("gc")
    assert item["state"] == "done" and f"{REPO}@two" in cli.pool.snaps
    assert cli.ok("gc", text=True) == "\n"


def test_a_bad_queue_bound_is_usage(cli: InProcess) -> None:
    cli.env["DSG_STORAGE_QUEUE_MAX_PENDING"] = "lots"
    ran = cli("queue", "stats")
    assert ran.status == 2 and "DSG_STORAGE_QUEUE_MAX_PENDING" in ran.err


def commit_three(cli: InProcess) -> list[str]:
    cli.repository()
    for message in ("second", "third"):
        cli.ok("commit", REPO, cli.ok("begin", REPO)["tx"], "-m", message)
    return [c["name"] for c in cli.ok("history", REPO)]


def test_prune_destroys_what_the_policy_lets_go_and_keep_protects(cli: InProcess) -> None:
    first, second, third = commit_three(cli)
    assert cli.ok("keep", REPO, first) == {"snapshot": f"{REPO}@{first}", "keep": True}
    plan = cli.ok("prune", REPO, "--keep-last", "1", "--dry-run")
    assert plan["dry_run"] is True and plan["destroy"] == [f"{REPO}@{second}"] and plan["destroyed"] == []
    assert f"{REPO}@{second}" in cli.pool.snaps
    done = cli.ok("prune", REPO, "--keep-last", "1", "--save-policy")
    assert done["destroyed"] == [f"{REPO}@{second}"]
    assert [c["name"] for c in cli.ok("history", REPO)] == [first, third]
    assert cli.ok("keep", REPO, first, "--remove", text=True) == f"{REPO}@{first}: unmarked\n"
    again = cli.ok("prune", REPO)  # the saved policy
    assert again["destroyed"] == [f"{REPO}@{first}"] and again["policy"]["last"] == 1
    ran = cli("prune", REPO, "--save-policy")
    assert ran.status == 2 and "--save-policy needs --keep-* rules" in ran.err


def test_metrics_reports_the_repositories_and_the_queue(cli: InProcess) -> None:
    cli.repository()
    queued(cli, f"{REPO}@later")
    text = cli.ok("metrics", text=True)
    assert 'dsg_storage_queue_items{state="pending"} 1.0' in text and REPO in text
    written = cli.ok("metrics", "--under", "tank/data", "--textfile", str(cli.tmp))
    assert written == {"file": str(cli.tmp / "dsg_storage.prom")}
    assert 'dsg_storage_queue_items{state="pending"} 1.0' in (cli.tmp / "dsg_storage.prom").read_text()
    cli.env["DSG_STORAGE_ALLOW"] = ""
    ran = cli("metrics")
    assert ran.status == 2 and "say which repositories to report" in ran.err


def test_install_hooks_carries_the_settings_it_was_run_with(cli: InProcess) -> None:
    cli.env["DSG_STORAGE_LOCK_DIR"] = "/run/locks"
    cli.env["HOME"] = "/root"
    files = cli.ok("install-hooks", "--print", "--command", "/usr/bin/dsg-storage")
    unit = next(f for f in files if f["name"].endswith(".service"))
    assert "DSG_STORAGE_LOCK_DIR=/run/locks" in unit["content"] and "DSG_STORAGE_ALLOW=tank/data" in unit["content"]
    assert "HOME" not in unit["content"]
    # Installing (files root runs later, checked root's all the way): tests/unit/test_hooks.py.


def test_cache_stats_and_clear(cli: InProcess) -> None:
    cli.repository()
    (cli.tmp / "cache").mkdir(mode=0o700)
    cli.env["DSG_STORAGE_CACHE"] = str(cli.tmp / "cache" / "reads.sqlite")
    cli.ok("history", REPO)
    assert cli.ok("cache", "stats")["entries"] == {"history": 1}
    assert cli.ok("cache", "clear")["cleared"] == 1
    assert cli.ok("cache", "stats", text=True).startswith(f"{cli.env['DSG_STORAGE_CACHE']}: empty; ")
    del cli.env["DSG_STORAGE_CACHE"]
    ran = cli("cache", "stats")
    assert ran.status == 2 and "which read cache?" in ran.err


def test_demo_adds_its_parent_to_the_allow_list_only_in_the_test_pool(cli: InProcess) -> None:
    ran = cli("demo", "--parent", "tank/demo", "--mount-dir", str(cli.tmp))
    assert ran.status == 3 and "tank/demo" in ran.err
    assert "tank/demo" not in cli.pool.datasets
    assert cli("--offline", "demo").status == 8
