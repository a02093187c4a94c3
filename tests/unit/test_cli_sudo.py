"""The CLI through sudo, in what needs no pool: the policy is required, environment
variables that would steer root are dropped, output paths are checked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dsg_storage import AllowList
from dsg_storage.cli.commands import EXIT_NOT_ALLOWED, main
from dsg_storage.cli.sudo import Invocation
from dsg_storage.errors import NotAllowedError
from dsg_storage.policy import DEFAULT_PATH

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="a trusted policy file must be root's")


def test_without_sudo_nothing_changes() -> None:
    env = {"DSG_STORAGE_ALLOW": "tank/a"}
    inv = Invocation.from_environment(env)
    assert not inv.sudo and inv.policy is None and env == {"DSG_STORAGE_ALLOW": "tank/a"}
    assert inv.owner("0:0", creating=True) == "0:0"
    assert inv.mountpoint("/etc") == "/etc"


def test_without_sudo_the_command_line_uses_the_direct_variant(monkeypatch: pytest.MonkeyPatch) -> None:
    from dsg_storage.cli.context import invocation
    from dsg_storage.cli.invocation import Direct
    from dsg_storage.zfs.allow import AllowList

    monkeypatch.setenv("DSG_STORAGE_ALLOW", "tank/a")
    env = {"DSG_STORAGE_ALLOW": "tank/a"}
    inv = invocation(env)
    assert isinstance(inv, Direct) and env == {"DSG_STORAGE_ALLOW": "tank/a"}
    assert not inv.sudo and inv.policy is None and inv.ignored == () and not inv.signatures_required
    assert inv.owner("0:0", creating=True) == "0:0" and inv.mountpoint("/etc") == "/etc"
    assert inv.allow(AllowList.parse("tank/b")).prefixes == ("tank/a", "tank/b")
    with inv.input("/etc/hostname") as given:
        assert given.path == "/etc/hostname" and given.source is None
    assert inv.signers("/home/me/allowed_signers") == "/home/me/allowed_signers"


def test_under_sudo_every_command_needs_the_policy_file(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # A path of its own: the real one may exist (tests/zfs/test_sudo_policy.py installs it).
    absent = str(tmp_path / "policy.toml")
    monkeypatch.setattr("dsg_storage.cli.sudo.DEFAULT_PATH", absent)
    monkeypatch.setenv("SUDO_UID", "65534")
    monkeypatch.setenv("SUDO_GID", "65534")
    for argv in (["--allow", "tank", "begin", "tank/x", "--mountpoint", "/etc"], ["history", "tank/x"]):
        assert main(argv) == EXIT_NOT_ALLOWED
        err = capsys.readouterr().err
        assert absent in err and "nothing was done" in err and "[datasets]" in err
    assert DEFAULT_PATH == "/etc/dsg-storage/policy.toml"  # what users are told to write


@pytest.fixture
def policy_file(tmp_path: Path) -> str:
    path = tmp_path / "policy.toml"
    path.write_text(
        '[datasets]\nallow = ["tank/data"]\n[mountpoints]\nunder = ["/srv/repos"]\n[output]\nunder = ["/home/u"]\n'
    )
    path.chmod(0o644)
    return str(path)


@needs_root
def test_under_sudo_steering_variables_are_dropped_and_flags_only_narrow(policy_file: str) -> None:
    env = {
        "SUDO_UID": "65534",
        "SUDO_GID": "65534",
        "DSG_STORAGE_ALLOW": "tank",
        "DSG_STORAGE_LOCK_DIR": "/tmp/x",
        "DSG_STORAGE_CRASH_AT": "commit:1",
        "TMPDIR": "/home/u",
        "PATH": "/usr/bin",
    }
    inv = Invocation.from_environment(env, policy_path=policy_file)
    assert inv.sudo and set(env) == {"SUDO_UID", "SUDO_GID", "PATH"}
    assert "DSG_STORAGE_ALLOW" in inv.ignored and "TMPDIR" in inv.ignored
    assert inv.allow(AllowList(("tank",))).prefixes == ("tank/data",)
    assert inv.allow(AllowList(("tank/data/one",))).prefixes == ("tank/data/one",)
    assert inv.allow(AllowList()).prefixes == ("tank/data",)
    assert inv.owner(None, creating=True) == "65534:65534"
    with pytest.raises(NotAllowedError):
        inv.owner("0:0", creating=True)
    with pytest.raises(NotAllowedError):
        inv.mountpoint("/etc")
    with pytest.raises(NotAllowedError):
        inv.output("/etc/ld.so.preload", force=True)
    with pytest.raises(NotAllowedError):
        inv.cache_path("/var/lib/dsg-storage/queue.sqlite")
    out = inv.output("/home/u/b.dsgb", force=False)
    assert out.owner == (65534, 65534) and out.replace is False


@needs_root
def test_under_sudo_an_audit_log_the_caller_names_is_refused(policy_file: str) -> None:
    """Root appends to the audit log: through sudo only its standard path is accepted."""
    import argparse

    from dsg_storage.cli.commands import _check_sudo
    from dsg_storage.transfer.audit import DEFAULT_PATH as DEFAULT_AUDIT_LOG

    inv = Invocation.from_environment({"SUDO_UID": "65534", "SUDO_GID": "65534"}, policy_path=policy_file)

    def check(audit_log: str | None) -> None:
        args = argparse.Namespace(
            offline=False, command="bundle", bundle_command="import", audit_log=audit_log, into="tank/data/x"
        )
        _check_sudo(args, inv)

    with pytest.raises(NotAllowedError, match="--audit-log"):
        check("/etc/ld.so.preload")
    check(None)
    check(str(DEFAULT_AUDIT_LOG))


@pytest.fixture
def through_sudo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """main() as run through sudo by uid 65534, under a policy allowing tank/data and
    output beneath tmp/out; root's queue at tmp/queue.sqlite. Returns tmp."""
    (tmp_path / "out").mkdir(mode=0o755)
    policy = tmp_path / "policy.toml"
    policy.write_text(f'[datasets]\nallow = ["tank/data"]\n[output]\nunder = ["{tmp_path / "out"}"]\n')
    policy.chmod(0o644)
    monkeypatch.setattr("dsg_storage.cli.sudo.DEFAULT_PATH", str(policy))
    monkeypatch.setattr("dsg_storage.queue.DEFAULT_PATH", str(tmp_path / "queue.sqlite"))
    monkeypatch.setenv("SUDO_UID", "65534")
    monkeypatch.setenv("SUDO_GID", "65534")
    return tmp_path


@needs_root
def test_under_sudo_metrics_checks_every_under_and_the_textfile_first(
    through_sudo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv, said in (
        (["metrics", "--under", "tank/data", "--under", "tank/other"], "'tank/other' is outside what"),
        (["--allow", "tank/data/a", "metrics", "--under", "tank/data/b"], "tank/data/b"),
        (["metrics", "--under", "tank/data", "--textfile", "/etc"], "/etc/dsg_storage.prom is outside the directories"),
        (["metrics", "--textfile", str(through_sudo)], "outside the directories"),
    ):
        assert main(argv) == EXIT_NOT_ALLOWED, argv
        err = capsys.readouterr().err
        assert err.startswith("dsg-storage: ") and said in err, err
    assert not Path("/etc/dsg_storage.prom").exists() and not (through_sudo / "dsg_storage.prom").exists()
    assert not (through_sudo / "queue.sqlite").exists()  # refused before anything was read


@needs_root
def test_under_sudo_the_queue_shows_and_drops_only_allowed_items(
    through_sudo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from dsg_storage import Queue

    with Queue(through_sudo / "queue.sqlite") as queue:
        mine = queue.add_snapshot("tank/data/a@nightly")
        theirs = queue.add_destroy("other/secret@s")
        queue.add_destroy("tank/database@s")  # a prefix of a name is not the dataset
    assert main(["--json", "queue", "list"]) == 0
    assert [i["target"] for i in json.loads(capsys.readouterr().out)] == ["tank/data/a@nightly"]
    assert main(["--allow", "tank/data/b", "queue", "list"]) == 0
    assert capsys.readouterr().out.strip() == ""
    assert main(["--json", "queue", "stats"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["counts"] == {"pending": 1, "done": 0, "dead": 0} and "free" in stats
    for action in (["queue", "flush", "--dry-run"], ["gc", "--dry-run"]):
        assert main(action) == 0
        assert capsys.readouterr().out.splitlines() == [f"would snapshot tank/data/a@nightly (item {mine.id})"]
    assert main(["queue", "drop", str(theirs.id)]) == EXIT_NOT_ALLOWED
    err = capsys.readouterr().err
    assert f"queue item {theirs.id}" in err and "other/secret" not in err
    with Queue(through_sudo / "queue.sqlite") as queue:
        assert queue.get(theirs.id).target == "other/secret@s"  # still there
