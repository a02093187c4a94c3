"""The sudo policy file: parsing, the file's own safety, and every check it makes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dsg_storage import AllowList
from dsg_storage.core.options import Owner
from dsg_storage.errors import InvalidArgumentError, NotAllowedError, UnsafePathError
from dsg_storage.policy import EXAMPLE, PolicyError, SudoPolicy, check_repository_props, invoker_from_env

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
[properties]
allow = ["org.example:", "net.other:job"]
"""


@pytest.fixture
def policy() -> SudoPolicy:
    return SudoPolicy.parse(TEXT, source="policy.toml", invoker=ALICE)


def test_parse_reads_every_section(policy: SudoPolicy) -> None:
    assert policy.datasets == AllowList(("tank/data", "vault"))
    assert policy.mountpoints_under == ("/srv/repos",)
    assert policy.owners == (ALICE, Owner(2000, 2000))
    assert policy.require_signed_bundles is True
    assert policy.output_under == ("/home/alice",)
    assert policy.properties == ("org.example:", "net.other:job")


def test_defaults_allow_nothing_but_the_invoker_as_owner() -> None:
    empty = SudoPolicy.parse("", invoker=ALICE)
    assert empty.owners == (ALICE,) and not empty.require_signed_bundles
    with pytest.raises(NotAllowedError):
        empty.check_dataset("tank/data/x")
    with pytest.raises(NotAllowedError):
        empty.check_mountpoint("/srv/repos/x")
    with pytest.raises(NotAllowedError):
        empty.check_output("/home/alice/x")
    assert SudoPolicy.parse(EXAMPLE, invoker=ALICE).datasets == AllowList(("tank/data",))


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
        "[properties]\nallow = ['nocolon']",
        "[properties]\nallow = [':job']",
        "[properties]\nallow = 'org.example:'",
        "not toml at all [",
    ],
)
def test_a_malformed_policy_is_refused_with_its_source(text: str) -> None:
    with pytest.raises(PolicyError, match="p.toml"):
        SudoPolicy.parse(text, source="p.toml", invoker=ALICE)


def test_properties_are_allowed_by_name_or_module_and_none_by_default(policy: SudoPolicy) -> None:
    policy.check_properties({"org.example:job": "x", "org.example:site": "y", "net.other:job": "z"})
    for key in ("net.other:site", "syncoid:sync", "org.example.evil:job", "org.examplex:job"):
        with pytest.raises(NotAllowedError, match=f"{key}.*policy.toml"):
            policy.check_properties({"org.example:job": "x", key: "v"})
    with pytest.raises(NotAllowedError, match="none"):
        SudoPolicy.parse("", invoker=ALICE).check_properties({"org.example:job": "x"})
    SudoPolicy.parse("", invoker=ALICE).check_properties({})  # no --property: nothing to allow


def test_datasets_are_checked_and_the_caller_can_only_narrow(policy: SudoPolicy) -> None:
    policy.check_dataset("tank/data/survey")
    with pytest.raises(NotAllowedError, match="policy.toml"):
        policy.check_dataset("tank/database")
    narrowed = policy.narrowed(AllowList(("tank/data/survey", "tank/etc")))
    narrowed.check_dataset("tank/data/survey/x")
    with pytest.raises(NotAllowedError):
        narrowed.check_dataset("tank/data/other")
    with pytest.raises(NotAllowedError):
        narrowed.check_dataset("tank/etc")  # the caller cannot widen
    assert narrowed.allow_list().prefixes == ("tank/data/survey",)
    assert policy.narrowed(AllowList()).allow_list().prefixes == policy.datasets.prefixes
    assert narrowed.allow_list().places is narrowed  # every boundary built from it checks mounts


@pytest.mark.parametrize("path", ["/etc", "/srv/repos", "/srv/reposx/a", "/srv/repos/../etc", "/"])
def test_mountpoints_must_lie_beneath_an_allowed_directory(policy: SudoPolicy, path: str) -> None:
    with pytest.raises((NotAllowedError, InvalidArgumentError)):
        policy.check_mountpoint(path)


def test_mountpoint_beneath_is_allowed(policy: SudoPolicy) -> None:
    assert policy.check_mountpoint("/srv/repos/survey") == "/srv/repos/survey"


def test_owners(policy: SudoPolicy) -> None:
    assert policy.check_owner("1000:1000") == ALICE
    assert policy.check_owner((2000, 2000)) == Owner(2000, 2000)
    with pytest.raises(NotAllowedError, match="owner 0:0"):
        policy.check_owner("0:0")
    with pytest.raises(NotAllowedError):
        policy.check_owner("1000:0")


def test_output_paths(policy: SudoPolicy) -> None:
    assert policy.check_output("/home/alice/b.dsgb") == "/home/alice/b.dsgb"
    with pytest.raises(NotAllowedError, match="output file /etc/ld.so.preload"):
        policy.check_output("/etc/ld.so.preload")
    with pytest.raises(NotAllowedError):
        policy.check_output("/home/alice/../bob/x")


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the file-safety cases chown files to root and others")


def test_repository_props_are_well_formed_without_a_policy() -> None:
    good = {
        "dsg-storage:path": "/srv/repos/survey.dsg-tx-1",
        "dsg-storage:mountpoint": "/srv/repos/survey",
        "dsg-storage:owner": "1000:1000",
        "dsg-storage:mode": "0750",
        "mountpoint": "/anywhere/at/all",  # root acts on it only through a policy's rule
    }
    check_repository_props(good)
    for key, value in [
        ("dsg-storage:mountpoint", "relative"),
        ("dsg-storage:path", "/srv/repos/../../etc"),
        ("dsg-storage:owner", "root"),
        ("dsg-storage:mode", "99999"),
    ]:
        with pytest.raises(InvalidArgumentError, match=key):
            check_repository_props({**good, key: value})


@pytest.fixture
def repos(tmp_path: Path) -> Path:
    """A root-owned directory for mountpoints, as an administrator makes /srv/repos."""
    tmp_path.chmod(0o755)
    (tmp_path / "repos").mkdir(mode=0o755)
    return tmp_path / "repos"


def policy_under(repos: Path) -> SudoPolicy:
    return SudoPolicy.parse(TEXT.replace('"/srv/repos"', f'"{repos}"'), source="/etc/p.toml", invoker=ALICE)


def test_repository_props_from_a_pool_are_checked(repos: Path) -> None:
    policy = policy_under(repos)
    good = {
        "dsg-storage:path": f"{repos}/survey.dsg-tx-1",
        "dsg-storage:mountpoint": f"{repos}/survey",
        "dsg-storage:owner": "1000:1000",
        "dsg-storage:mode": "0750",
        "mountpoint": f"{repos}/survey",
    }
    policy.check_repository_props("tank/data/survey", good)
    for key, value in [
        ("dsg-storage:mountpoint", "/etc"),
        ("dsg-storage:path", "/root/.ssh"),
        ("dsg-storage:owner", "0:0"),
        ("mountpoint", "/etc/cron.d"),  # the native one, inherited or set by hand
    ]:
        with pytest.raises(NotAllowedError, match=key):
            policy.check_repository_props("tank/data/survey", {**good, key: value})


@needs_root
def test_one_rule_for_every_place_root_mounts(repos: Path) -> None:
    """Beneath [mountpoints] under, and the parent root's all the way up, with no link:
    a user's own repository (or a link they planted in it) is no place for root's mount."""
    policy = policy_under(repos)
    assert policy.check_place(f"{repos}/survey/") == f"{repos}/survey"
    alice = repos / "alice"  # the root of alice's own repository: hers to change
    alice.mkdir()
    os.chown(alice, ALICE.uid, ALICE.gid)
    with pytest.raises(UnsafePathError, match="root's all the way up"):
        policy.check_place(f"{alice}/sub")
    (repos / "etc-link").symlink_to("/etc")
    with pytest.raises(UnsafePathError, match="symbolic link"):
        policy.check_place(f"{repos}/etc-link/cron.d")
    with pytest.raises(NotAllowedError, match="does not exist"):
        policy.check_place(f"{repos}/missing/sub")
    with pytest.raises(NotAllowedError, match="outside"):
        policy.check_place("/etc/cron.d")
    # the allow-list the boundary is built from carries the same rule
    with pytest.raises(UnsafePathError):
        policy.allow_list().check_place(f"{alice}/sub")
    assert AllowList(("tank",)).check_place(f"{alice}/sub") == f"{alice}/sub"  # no policy: root's own business


def test_invoker_from_env() -> None:
    assert invoker_from_env({}) is None
    assert invoker_from_env({"SUDO_UID": "1000", "SUDO_GID": "1000"}) == ALICE
    with pytest.raises(PolicyError):
        invoker_from_env({"SUDO_UID": "1000; rm", "SUDO_GID": "1"})
    with pytest.raises(PolicyError):
        invoker_from_env({"SUDO_UID": "\u0661\u0660\u0660\u0660", "SUDO_GID": "1000"})  # Arabic-Indic 1000


@needs_root
def test_load_accepts_only_a_roots_file_writable_by_nobody_else(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    path = tmp_path / "policy.toml"
    path.write_text(TEXT)
    path.chmod(0o644)
    assert SudoPolicy.load(str(path), invoker=ALICE).datasets == AllowList(("tank/data", "vault"))
    path.chmod(0o666)
    with pytest.raises(PolicyError, match="writable by nobody else"):
        SudoPolicy.load(str(path))
    path.chmod(0o644)
    os.chown(path, 65534, 65534)
    with pytest.raises(PolicyError, match="uid 65534"):
        SudoPolicy.load(str(path))
    os.chown(path, 0, 0)
    link = tmp_path / "link.toml"
    link.symlink_to(path)
    with pytest.raises(PolicyError):
        SudoPolicy.load(str(link))
    with pytest.raises(FileNotFoundError):
        SudoPolicy.load(str(tmp_path / "missing.toml"))
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "policy.toml").write_text(TEXT)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(PolicyError, match="cannot be trusted"):
        SudoPolicy.load(str(theirs / "policy.toml"))


def test_bundle_limits_and_signers_are_parsed_strictly() -> None:
    text = TEXT.replace(
        "[bundles]\n", '[bundles]\nallowed_signers = "/etc/dsg-storage/allowed_signers"\nmax_size = 1048576\n'
    )
    policy = SudoPolicy.parse(text, source="p.toml", invoker=ALICE)
    assert policy.allowed_signers == "/etc/dsg-storage/allowed_signers" and policy.max_bundle_size == 1 << 20
    for bad in ("max_size = 0", "max_size = true", "max_size = -1", 'allowed_signers = "rel"'):
        with pytest.raises(PolicyError, match=r"\[bundles\]"):
            SudoPolicy.parse(TEXT.replace("[bundles]\n", f"[bundles]\n{bad}\n"), source="p.toml", invoker=ALICE)


@needs_root
def test_only_the_policys_allowed_signers_file_counts(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    signers = tmp_path / "allowed_signers"
    signers.write_text("alice@office ssh-ed25519 AAAA\n")
    signers.chmod(0o644)
    policy = SudoPolicy.parse(
        TEXT.replace("[bundles]\n", f'[bundles]\nallowed_signers = "{signers}"\n'), source="p.toml", invoker=ALICE
    )
    assert policy.signers_file(None) == policy.signers_file(str(signers)) == str(signers)
    with pytest.raises(NotAllowedError, match=str(signers)):
        policy.signers_file(str(tmp_path / "mine"))
    os.chown(signers, ALICE.uid, ALICE.gid)  # the caller's file is no trust anchor
    with pytest.raises(PolicyError, match="root's"):
        policy.signers_file(None)
    assert SudoPolicy.parse(TEXT, source="p.toml").signers_file(None) is None
    signers.unlink()
    with pytest.raises(PolicyError, match="does not exist"):
        policy.signers_file(None)
