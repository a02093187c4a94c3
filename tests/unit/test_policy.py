"""The sudo policy file: parsing, the file's own safety, and every check it makes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dsg_storage import AllowList
from dsg_storage.core.options import Owner
from dsg_storage.errors import InvalidArgumentError, NotAllowedError
from dsg_storage.policy import EXAMPLE, Policy, PolicyError, check_repository_props, invoker_from_env

ALICE = Owner(1000, 1000)
TEXT = """
version = 1
[datasets]
allow = ["tank/data", "vault"]
[mountpoints]
under = ["/srv/repos"]
[owners]
allow = ["invoker", "2000:2000"]
[bundles]
require_signed = true
[output]
under = ["/home/alice"]
"""


@pytest.fixture
def policy() -> Policy:
    return Policy.parse(TEXT, source="policy.toml", invoker=ALICE)


def test_parse_reads_every_section(policy: Policy) -> None:
    assert policy.datasets == AllowList(("tank/data", "vault"))
    assert policy.mountpoints_under == ("/srv/repos",)
    assert policy.owners == (ALICE, Owner(2000, 2000))
    assert policy.require_signed_bundles is True
    assert policy.output_under == ("/home/alice",)


def test_defaults_allow_nothing_but_the_invoker_as_owner() -> None:
    empty = Policy.parse("", invoker=ALICE)
    assert empty.owners == (ALICE,) and not empty.require_signed_bundles
    with pytest.raises(NotAllowedError):
        empty.check_dataset("tank/data/x")
    with pytest.raises(NotAllowedError):
        empty.check_mountpoint("/srv/repos/x")
    with pytest.raises(NotAllowedError):
        empty.check_output("/home/alice/x")
    assert Policy.parse(EXAMPLE, invoker=ALICE).datasets == AllowList(("tank/data",))


@pytest.mark.parametrize(
    "text",
    [
        "[datasets]\nallow = 'tank'",  # not a list
        "[datasets]\nallo = ['tank']",  # unknown key
        "[dataset]\nallow = ['tank']",  # unknown section
        "[mountpoints]\nunder = ['/']",  # everything
        "[mountpoints]\nunder = ['srv']",  # relative
        "[mountpoints]\nunder = ['/srv/../etc']",
        "[datasets]\nallow = ['tank@x']",
        "[owners]\nallow = ['nosuchuser:nosuchgroup']",
        "version = 2",
        "[bundles]\nrequire_signed = 'yes'",
        "not toml at all [",
    ],
)
def test_a_malformed_policy_is_refused_with_its_source(text: str) -> None:
    with pytest.raises(PolicyError, match="p.toml"):
        Policy.parse(text, source="p.toml", invoker=ALICE)


def test_datasets_are_checked_and_the_caller_can_only_narrow(policy: Policy) -> None:
    policy.check_dataset("tank/data/survey")
    with pytest.raises(NotAllowedError, match="policy.toml"):
        policy.check_dataset("tank/database")
    narrowed = policy.narrowed(AllowList(("tank/data/survey", "tank/etc")))
    narrowed.check_dataset("tank/data/survey/x")
    with pytest.raises(NotAllowedError):
        narrowed.check_dataset("tank/data/other")
    with pytest.raises(NotAllowedError):
        narrowed.check_dataset("tank/etc")  # the caller cannot widen
    assert narrowed.allow_list() == AllowList(("tank/data/survey",))
    assert policy.narrowed(AllowList()).allow_list() == policy.datasets


@pytest.mark.parametrize("path", ["/etc", "/srv/repos", "/srv/reposx/a", "/srv/repos/../etc", "/"])
def test_mountpoints_must_lie_beneath_an_allowed_directory(policy: Policy, path: str) -> None:
    with pytest.raises((NotAllowedError, InvalidArgumentError)):
        policy.check_mountpoint(path)


def test_mountpoint_beneath_is_allowed(policy: Policy) -> None:
    assert policy.check_mountpoint("/srv/repos/survey") == "/srv/repos/survey"


def test_owners(policy: Policy) -> None:
    assert policy.check_owner("1000:1000") == ALICE
    assert policy.check_owner((2000, 2000)) == Owner(2000, 2000)
    with pytest.raises(NotAllowedError, match="owner 0:0"):
        policy.check_owner("0:0")
    with pytest.raises(NotAllowedError):
        policy.check_owner("1000:0")


def test_output_paths(policy: Policy) -> None:
    assert policy.check_output("/home/alice/b.dsgb") == "/home/alice/b.dsgb"
    with pytest.raises(NotAllowedError, match="output file /etc/ld.so.preload"):
        policy.check_output("/etc/ld.so.preload")
    with pytest.raises(NotAllowedError):
        policy.check_output("/home/alice/../bob/x")


def test_repository_props_from_a_pool_are_checked(policy: Policy) -> None:
    good = {
        "dsg-storage:path": "/srv/repos/survey.dsg-tx-1",
        "dsg-storage:mountpoint": "/srv/repos/survey",
        "dsg-storage:owner": "1000:1000",
        "dsg-storage:mode": "0750",
    }
    policy.check_repository_props("tank/data/survey", good)
    check_repository_props(good)
    for key, value in [
        ("dsg-storage:mountpoint", "/etc"),
        ("dsg-storage:path", "/root/.ssh"),
        ("dsg-storage:owner", "0:0"),
    ]:
        with pytest.raises(NotAllowedError, match=key):
            policy.check_repository_props("tank/data/survey", {**good, key: value})
    for key, value in [
        ("dsg-storage:mountpoint", "relative"),
        ("dsg-storage:path", "/srv/repos/../../etc"),
        ("dsg-storage:owner", "root"),
        ("dsg-storage:mode", "99999"),
    ]:
        with pytest.raises(InvalidArgumentError, match=key):
            check_repository_props({**good, key: value})


def test_invoker_from_env() -> None:
    assert invoker_from_env({}) is None
    assert invoker_from_env({"SUDO_UID": "1000", "SUDO_GID": "1000"}) == ALICE
    with pytest.raises(PolicyError):
        invoker_from_env({"SUDO_UID": "1000; rm", "SUDO_GID": "1"})
    with pytest.raises(PolicyError):
        invoker_from_env({"SUDO_UID": "\u0661\u0660\u0660\u0660", "SUDO_GID": "1000"})  # Arabic-Indic 1000


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the file-safety cases chown files to root and others")


@needs_root
def test_load_accepts_only_a_roots_file_writable_by_nobody_else(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    path = tmp_path / "policy.toml"
    path.write_text(TEXT)
    path.chmod(0o644)
    assert Policy.load(str(path), invoker=ALICE).datasets == AllowList(("tank/data", "vault"))
    path.chmod(0o666)
    with pytest.raises(PolicyError, match="writable by nobody else"):
        Policy.load(str(path))
    path.chmod(0o644)
    os.chown(path, 65534, 65534)
    with pytest.raises(PolicyError, match="uid 65534"):
        Policy.load(str(path))
    os.chown(path, 0, 0)
    link = tmp_path / "link.toml"
    link.symlink_to(path)
    with pytest.raises(PolicyError):
        Policy.load(str(link))
    with pytest.raises(FileNotFoundError):
        Policy.load(str(tmp_path / "missing.toml"))
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "policy.toml").write_text(TEXT)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(PolicyError, match="cannot be trusted"):
        Policy.load(str(theirs / "policy.toml"))
