"""``sudo dsg-storage`` on real ZFS: every attack of issue #14 tried as a sync user would,
through the CLI (``python3 -m dsg_storage`` with ``SUDO_UID``/``SUDO_GID`` of the
unprivileged uid 65534), and the hostfs primitives the core mounts and chowns with.

The policy lives where sudo callers find it, ``/etc/dsg-storage/policy.toml`` (the CLI
takes no other path through sudo, by design); these tests write it once and refuse to
run if a different one is there. It allows only ``dsgtest/sudo-policy`` and directories
under ``/var/tmp/dsg-sudo-policy``. Other tests are unaffected: without ``SUDO_UID`` the
CLI never reads it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from dsg_storage import AllowList, Queue, hostfs
from dsg_storage.core.options import Owner
from dsg_storage.errors import NotAllowedError, UnsafePathError
from dsg_storage.policy import DEFAULT_PATH, SudoPolicy
from dsg_storage.queue import DEFAULT_PATH as QUEUE_PATH
from dsg_storage.zfs.boundary import Zfs
from dsg_storage.zfs.mounts import zfs_mounts

from .cli import dsg
from .conftest import POOL
from .test_transactions import zfs_prop

USER = 65534
PARENT = f"{POOL}/sudo-policy"
BASE = Path("/var/tmp/dsg-sudo-policy")
MNT, OUT = BASE / "mnt", BASE / "out"
USER_MNT, USER_OUT = MNT / f"u{USER}", OUT / f"u{USER}"
VICTIM = BASE / "victim"  # a root file that must never change
SIGNERS = "/etc/dsg-storage/allowed_signers"  # root's: whose signatures root trusts
MAX_BUNDLE = 8 << 20  # the largest bundle of the caller's that root copies
AUDIT_LOG = Path("/var/log/dsg-storage/audit.log")  # the only one through sudo
POLICY = f"""\
version = 1
[datasets]
allow = ["{PARENT}"]
[mountpoints]
under = ["{MNT}"]
[owners]
allow = ["invoker"]
[output]
under = ["{OUT}"]
[bundles]
allowed_signers = "{SIGNERS}"
max_size = {MAX_BUNDLE}
[properties]
allow = ["org.example:"]
"""


@pytest.fixture(scope="session")
def sudo_setup() -> None:
    """The policy file, the directories it names, the parent dataset (once per VM)."""
    with open("/tmp/dsg-sudo-policy.setup.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        policy = Path(DEFAULT_PATH)
        if policy.exists() and policy.read_text() != POLICY:
            pytest.fail(f"{DEFAULT_PATH} exists with other content: these tests will not replace it", pytrace=False)
        for directory in (policy.parent, BASE, MNT, OUT):
            directory.mkdir(mode=0o755, exist_ok=True)
            os.chmod(directory, 0o755)
        for directory in (USER_MNT, USER_OUT):
            directory.mkdir(exist_ok=True)
            os.chown(directory, USER, USER)
        if not policy.exists():
            tmp = policy.with_suffix(".tmp")
            tmp.write_text(POLICY)
            tmp.chmod(0o644)
            tmp.rename(policy)
        if not Path(SIGNERS).exists():  # as the administrator does: nobody signs yet
            Path(SIGNERS).write_text("")
            Path(SIGNERS).chmod(0o644)
        VICTIM.write_text("root's\n")
        if subprocess.run(["zfs", "list", PARENT], capture_output=True, check=False).returncode != 0:
            subprocess.run(["zfs", "create", "-o", "mountpoint=none", PARENT], check=True)


@attrs.frozen
class Box:
    dataset: str  # a repository name inside the policy
    leaf: str

    @property
    def mnt(self) -> Path:
        return MNT / self.leaf

    def exists(self, name: str | None = None) -> bool:
        return subprocess.run(["zfs", "list", name or self.dataset], capture_output=True, check=False).returncode == 0


@pytest.fixture
def box(sudo_setup: None, worker_id: str, request: pytest.FixtureRequest) -> Iterator[Box]:
    leaf = f"{worker_id}-" + re.sub(r"[^A-Za-z0-9_-]", "-", request.node.name)[:50]
    b = Box(f"{PARENT}/{leaf}", leaf)
    yield b
    for dataset, paths in zfs_mounts().items():
        if dataset.startswith(b.dataset):
            for path in paths:
                subprocess.run(["umount", path], check=False)
    if b.exists():
        # check=False: it may be gone between the two commands (once seen in a full run,
        # right after the exclusive pool was handed back); what counts is that it is gone.
        subprocess.run(["zfs", "destroy", "-r", "-f", b.dataset], check=False)
    assert not b.exists(), f"{b.dataset} was left behind"
    for path in MNT.glob(f"{leaf}*"):
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
    assert VICTIM.read_text() == "root's\n"


def cli(*args: str, sudo: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``dsg-storage ARGS`` as run through sudo by ``USER`` (``sudo=False``: by root itself),
    this process's environment with ``env`` added."""
    environ = {**os.environ, **(env or {})}
    if sudo:
        environ.update(SUDO_UID=str(USER), SUDO_GID=str(USER), SUDO_USER="nobody")
    return dsg(*args, json=False, env=environ, timeout=300)


def refused(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 3, (result.returncode, result.stdout, result.stderr)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("dsg-storage: ") and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def make_repo(box: Box, files: dict[str, str] | None = None) -> str:
    """A committed repository owned by the invoking user, made through sudo as they would."""
    begun = cli("--json", "begin", box.dataset, "--mountpoint", str(box.mnt))
    assert begun.returncode == 0, begun.stderr
    tx = json.loads(begun.stdout)
    for rel, text in (files or {"a.txt": "alpha\n"}).items():
        Path(tx["path"], rel).write_text(text)
    done = cli("commit", box.dataset, tx["tx"], "-m", "first")
    assert done.returncode == 0, done.stderr
    return str(tx["tx"])


# ---------------------------------------------------------------------- what may be changed
def test_a_repository_through_sudo_is_owned_by_the_invoking_user(box: Box) -> None:
    make_repo(box)
    st = box.mnt.stat()
    assert (st.st_uid, st.st_gid) == (USER, USER)
    assert (box.mnt / "a.txt").read_text() == "alpha\n"
    assert zfs_mounts()[box.dataset] == [str(box.mnt)]


def test_allow_and_the_environment_cannot_widen_the_policy(box: Box) -> None:
    outside = f"{POOL}/not-in-policy-{box.leaf}"
    for result in (
        cli("--allow", POOL, "begin", outside, "--mountpoint", str(MNT / f"{box.leaf}-x")),
        cli("begin", outside, "--mountpoint", str(MNT / f"{box.leaf}-x"), env={"DSG_STORAGE_ALLOW": POOL}),
    ):
        refused(result, outside, DEFAULT_PATH)
    assert not box.exists(outside) and not box.exists(f"{outside}.dsg-init-x")
    assert not (MNT / f"{box.leaf}-x").exists()


def test_a_mountpoint_outside_the_policy_such_as_etc_is_refused(box: Box) -> None:
    before = os.stat("/etc")
    refused(cli("begin", box.dataset, "--mountpoint", "/etc", "--owner", f"{USER}:{USER}"), "/etc", "mountpoints")
    after = os.stat("/etc")
    assert (after.st_uid, after.st_mode) == (before.st_uid, before.st_mode) == (0, before.st_mode)
    assert not box.exists() and "/etc" not in [p for ps in zfs_mounts().values() for p in ps]
    assert not any(n.startswith(box.dataset) for n in Zfs(AllowList()).children(PARENT))


def test_an_owner_other_than_the_invoking_user_is_refused(box: Box) -> None:
    refused(cli("begin", box.dataset, "--mountpoint", str(box.mnt), "--owner", "0:0"), "owner 0:0")
    assert not box.exists() and not box.mnt.exists()


def test_a_mountpoint_under_a_directory_the_caller_owns_is_refused(box: Box) -> None:
    """Its owner could swap it for a link to /etc while it is unmounted (or before a reboot)."""
    refused(cli("begin", box.dataset, "--mountpoint", str(USER_MNT / box.leaf)), f"owned by uid {USER}")
    link = USER_MNT / f"{box.leaf}-etc"
    link.symlink_to("/etc")
    os.lchown(link, USER, USER)
    refused(cli("begin", box.dataset, "--mountpoint", str(link / "x")))
    assert not box.exists() and not Path("/etc/x").exists()


def test_steering_variables_are_ignored_under_sudo(box: Box, tmp_path: Path) -> None:
    lock_dir = USER_OUT / f"{box.leaf}-locks"
    result = cli(
        "--json",
        "begin",
        box.dataset,
        "--mountpoint",
        str(box.mnt),
        env={"DSG_STORAGE_LOCK_DIR": str(lock_dir), "DSG_STORAGE_CRASH_AT": "begin:1", "TMPDIR": str(USER_OUT)},
    )
    assert result.returncode == 0, result.stderr  # not killed by the crash hook
    assert "dsg-storage: run through sudo, ignoring DSG_STORAGE_CRASH_AT, DSG_STORAGE_LOCK_DIR, TMPDIR" in result.stderr
    assert not lock_dir.exists()
    assert cli("rollback", box.dataset, json.loads(result.stdout)["tx"]).returncode == 0


def test_demo_never_widens_the_allow_list_outside_dsgtest() -> None:
    refused(cli("demo", "--parent", "tank/demo", sudo=False), "tank/demo")
    refused(cli("demo"), "not available through sudo")


# ---------------------------------------------------------------------- files written as root
def test_output_files_stay_where_the_policy_says_and_are_the_invoking_users(box: Box) -> None:
    make_repo(box)
    for target in ("/etc/ld.so.preload", str(VICTIM)):
        refused(cli("bundle", "export", box.dataset, "-o", target), "outside the directories")
        refused(cli("lock", box.dataset, "-o", target), "outside the directories")
    assert not Path("/etc/ld.so.preload").exists()

    bundle = USER_OUT / f"{box.leaf}.dsgb"
    # Planted links at names a partial file might take redirect nothing: its name is random.
    for pid in range(os.getpid(), os.getpid() + 50):
        (USER_OUT / f".{bundle.name}.partial-{pid}").symlink_to(VICTIM)
    assert cli("bundle", "export", box.dataset, "-o", str(bundle)).returncode == 0
    st = bundle.stat()
    assert (st.st_uid, st.st_gid) == (USER, USER)
    assert cli("bundle", "verify", str(bundle)).returncode == 0

    again = cli("bundle", "export", box.dataset, "-o", str(bundle))
    assert again.returncode == 2 and "--force" in again.stderr
    link = USER_OUT / f"{box.leaf}-link.dsgb"
    link.symlink_to(VICTIM)
    os.lchown(link, USER, USER)
    assert cli("bundle", "export", box.dataset, "-o", str(link)).returncode == 2
    assert cli("bundle", "export", box.dataset, "-o", str(link), "--force").returncode == 0
    assert not link.is_symlink() and link.stat().st_uid == USER  # the link was replaced, not followed

    lock = USER_OUT / f"{box.leaf}.lock"
    assert cli("lock", box.dataset, "-o", str(lock)).returncode == 0
    assert lock.stat().st_uid == USER
    assert cli("lock", box.dataset, "-o", str(lock)).returncode == 2
    assert cli("verify", "--lock", str(lock), box.dataset).returncode == 0
    for planted in USER_OUT.glob(f".{bundle.name}.partial-*"):
        assert planted.is_symlink()
        planted.unlink()


def test_files_root_could_read_but_the_caller_cannot_are_refused(box: Box) -> None:
    make_repo(box)
    secret = BASE / f"{box.leaf}-secret.dsgb"
    secret.write_text("not for the sync user")
    secret.chmod(0o600)
    refused(cli("bundle", "inspect", str(secret)), "may not read it")
    refused(cli("verify", "--lock", str(secret), box.dataset), "may not read it")


def test_the_read_cache_is_the_invoking_users_file_in_an_allowed_place(box: Box) -> None:
    make_repo(box)
    refused(cli("--cache", str(BASE / "cache.sqlite"), "history", box.dataset), "outside the directories")
    assert not (BASE / "cache.sqlite").exists()
    cache = USER_OUT / f"{box.leaf}-cache.sqlite"
    result = cli("--cache", str(cache), "history", box.dataset)
    assert result.returncode == 0, result.stderr
    st = cache.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (USER, 0o600)


def test_the_metrics_textfile_is_an_output_file_and_every_under_is_checked(box: Box) -> None:
    """#23: root wrote DIR/dsg_storage.prom in any DIR, and --under was a traceback."""
    make_repo(box)
    for target in (Path("/etc"), BASE):
        refused(cli("metrics", "--under", box.dataset, "--textfile", str(target)), "outside the directories")
        assert not (target / "dsg_storage.prom").exists()
    refused(cli("metrics", "--under", PARENT, "--under", POOL), f"'{POOL}' is outside what")
    refused(cli("--allow", f"{box.dataset}-other", "metrics", "--under", box.dataset), box.dataset)
    denied = cli("metrics", "--under", box.dataset, "--textfile", str(OUT))  # root's: the user may not write
    assert denied.returncode == 3 and "as the invoking user" in denied.stderr, denied.stderr
    assert not (OUT / "dsg_storage.prom").exists() and not list(OUT.glob(".dsg_storage.prom.partial-*"))

    textfiles = USER_OUT / f"{box.leaf}-textfile"
    textfiles.mkdir()
    os.chown(textfiles, USER, USER)
    planted = textfiles / "dsg_storage.prom"
    planted.symlink_to(VICTIM)  # replaced, never followed (the box checks VICTIM)
    os.lchown(planted, USER, USER)
    written = cli("--json", "metrics", "--under", box.dataset, "--textfile", str(textfiles))
    assert written.returncode == 0, written.stderr
    assert json.loads(written.stdout) == {"file": str(planted)}
    st = os.lstat(planted)
    assert stat.S_ISREG(st.st_mode) and (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (USER, USER, 0o644)
    assert f'dsg_storage_commits{{repository="{box.dataset}"}} 1.0' in planted.read_text().splitlines()
    assert os.listdir(textfiles) == ["dsg_storage.prom"]


def test_the_queue_through_sudo_shows_only_items_the_policy_allows(box: Box) -> None:
    """#23: 'queue list' showed every pool's items. Root's queue (sudo ignores
    $DSG_STORAGE_QUEUE) gets one item inside the policy and one outside."""
    make_repo(box)
    mine_target, theirs_target = f"{box.dataset}@queued", f"{POOL}/not-in-policy-{box.leaf}@secret"
    with Queue(QUEUE_PATH) as queue:
        mine, theirs = queue.add_snapshot(mine_target), queue.add_destroy(theirs_target)
    try:
        listed = cli("--json", "queue", "list")
        assert listed.returncode == 0, listed.stderr
        targets = [item["target"] for item in json.loads(listed.stdout)]
        assert mine_target in targets and all(AllowList((PARENT,)).allows(t) for t in targets)
        for command in (("queue", "list"), ("queue", "flush", "--dry-run"), ("gc", "--dry-run")):
            result = cli(*command)
            assert result.returncode == 0 and theirs_target not in result.stdout, (command, result.stdout)
        stats = cli("--json", "queue", "stats")
        assert stats.returncode == 0, stats.stderr
        with Queue(QUEUE_PATH) as queue:
            allowed = queue.stats(only=AllowList((PARENT,)).allows)
            assert queue.stats()["counts"]["pending"] > allowed["counts"]["pending"]
        assert json.loads(stats.stdout)["counts"] == allowed["counts"]

        dropped = cli("queue", "drop", str(theirs.id))
        refused(dropped, f"queue item {theirs.id}")
        assert theirs_target not in dropped.stderr
        flushed = cli("--json", "queue", "flush", "--pool", POOL)
        assert flushed.returncode == 0, flushed.stderr
        assert theirs_target not in flushed.stdout
        assert box.exists(mine_target)  # the caller's own item ran
        with Queue(QUEUE_PATH) as queue:
            after = queue.get(theirs.id)
        assert (after.state.value, after.attempts) == ("pending", 0)  # not shown, not run, not dropped
    finally:
        with Queue(QUEUE_PATH) as queue:
            for item in (mine, theirs):
                queue.drop(item.id)


def test_install_hooks_refuses_a_pythonpath_a_user_could_change(box: Box) -> None:
    """#23: the zedlet root runs at every pool import carried any PYTHONPATH. As root,
    an entry the sync user owns is refused and nothing is written; through sudo the
    command is refused outright."""
    zedlets = BASE / f"{box.leaf}-zed.d"
    theirs = USER_OUT / f"{box.leaf}-lib"
    theirs.mkdir()
    os.chown(theirs, USER, USER)
    ours = os.environ.get("PYTHONPATH", "")
    argv = ("--allow", PARENT, "install-hooks", "--zedlet-dir", str(zedlets))
    try:
        for pythonpath in (f"{ours}:{theirs}".lstrip(":"), f"{theirs}:{ours}".rstrip(":")):
            refused(cli(*argv, sudo=False, env={"PYTHONPATH": pythonpath}), str(theirs), f"owned by uid {USER}")
            assert not zedlets.exists()
        refused(cli(*argv), "not available through sudo")
        assert not zedlets.exists()
        installed = cli(*argv, sudo=False)  # this VM's own PYTHONPATH: root's alone
        assert installed.returncode == 0, installed.stderr
        assert str(theirs) not in (zedlets / "pool_import-dsg-storage.sh").read_text()
    finally:
        for path in zedlets.glob("*") if zedlets.exists() else ():
            path.unlink()
        if zedlets.exists():
            zedlets.rmdir()


# ---------------------------------------------------------------------- reads stay inside
def test_reads_never_follow_a_link_planted_in_the_repository(box: Box) -> None:
    tx = cli("--json", "begin", box.dataset, "--mountpoint", str(box.mnt))
    path = json.loads(tx.stdout)["path"]
    os.symlink("/etc", Path(path, "link"))
    os.symlink("/etc/shadow", Path(path, "shadow"))
    Path(path, "ok.txt").write_text("fine\n")
    assert cli("commit", box.dataset, json.loads(tx.stdout)["tx"]).returncode == 0

    shadow = os.stat("/etc/shadow")
    for command in ("stat", "cat"):
        result = cli("--json", command, box.dataset, "link/shadow")
        assert result.returncode == 2, result
        assert "symbolic link" in result.stderr and str(shadow.st_size) not in result.stdout
    linked = json.loads(cli("--json", "stat", box.dataset, "shadow").stdout)
    assert (linked["type"], linked["target"]) == ("symlink", "/etc/shadow")  # the link itself
    assert cli("cat", box.dataset, "shadow").returncode == 2
    listed = {e["path"]: e for e in json.loads(cli("--json", "ls", box.dataset).stdout)}
    assert listed["link"]["type"] == "symlink" and not any(p.startswith("link/") for p in listed)
    assert cli("cat", box.dataset, "ok.txt").stdout == "fine\n"
    assert cli("cat", box.dataset, "../../etc/passwd").returncode == 2
    refused(cli("stat", f"{POOL}/elsewhere", "x"), "outside what")


def test_begin_sets_only_the_user_properties_the_policy_allows(box: Box) -> None:
    """``--property`` through sudo: a module the policy names is set and kept after
    commit; any other (here syncoid's, which would stop the repository's replication)
    is refused before anything changes, whatever else the command asks."""
    make_repo(box)
    refused(cli("begin", box.dataset, "--property", "syncoid:sync=false"), "syncoid:sync", "[properties] allow")
    refused(cli("begin", box.dataset, "--property", "org.example:job=1", "--property", "syncoid:sync=false"))
    assert zfs_prop(box.dataset, "syncoid:sync") == "-" and not workspaces(box)
    begun = cli("--json", "begin", box.dataset, "--property", "org.example:job=nightly 7")
    assert begun.returncode == 0, begun.stderr
    tx = json.loads(begun.stdout)
    done = cli("commit", box.dataset, tx["tx"])
    assert done.returncode == 0, done.stderr
    assert zfs_prop(box.dataset, "org.example:job") == "nightly 7"
    assert (box.mnt / "a.txt").read_text() == "alpha\n"


def workspaces(box: Box) -> list[str]:
    return [n for n in Zfs(AllowList()).children(PARENT) if n.startswith(box.dataset) and n != box.dataset]


# ---------------------------------------------------------------------- pool properties
def test_properties_that_steer_root_are_checked_against_the_policy(box: Box) -> None:
    make_repo(box)
    policy = SudoPolicy.load(DEFAULT_PATH, invoker=Owner(USER, USER))
    props = (
        Zfs(AllowList()).get_props(box.dataset, ["dsg-storage:mountpoint", "dsg-storage:owner", "dsg-storage:mode"])
        or {}
    )
    policy.check_repository_props(box.dataset, props)
    subprocess.run(["zfs", "set", "dsg-storage:mountpoint=/etc", box.dataset], check=True)
    props = Zfs(AllowList()).get_props(box.dataset, ["dsg-storage:mountpoint", "dsg-storage:owner"]) or {}
    with pytest.raises(NotAllowedError, match="dsg-storage:mountpoint"):
        policy.check_repository_props(box.dataset, props)


def test_every_command_that_recovers_checks_the_pool_properties_first(box: Box) -> None:
    """A recorded mountpoint outside the policy (a pool from elsewhere, a property set by
    hand) is refused before root mounts anything there: by recover (of the repository
    or of its pool) and by prune, which recover first."""
    make_repo(box)
    outside = BASE / f"outside-{box.leaf}"
    outside.mkdir(exist_ok=True)
    subprocess.run(["zfs", "unmount", box.dataset], check=True)  # recovery would mount it again
    subprocess.run(["zfs", "set", f"dsg-storage:mountpoint={outside}", box.dataset], check=True)
    try:
        for args in (
            ("recover", box.dataset),
            ("--allow", box.dataset, "recover", "--pool", POOL),
            ("prune", box.dataset, "--keep-last", "5"),
        ):
            refused(cli(*args), "dsg-storage:mountpoint")
            assert not os.path.ismount(outside) and box.dataset not in zfs_mounts(), args
    finally:
        outside.rmdir()


def test_the_invoking_users_own_bundle_imports_from_roots_copy_within_the_policy(box: Box) -> None:
    """Their own file they could change while root imports it: root imports a private
    copy. Without --mountpoint a full import takes the one inherited from the parent:
    read from the pool, so checked against the policy like a recorded one."""
    make_repo(box, {"a.txt": "alpha\n"})
    bundle = USER_OUT / f"{box.leaf}.dsgb"
    assert cli("bundle", "export", box.dataset, "-o", str(bundle)).returncode == 0
    assert bundle.stat().st_uid == USER
    parent, outside = f"{box.dataset}-parent", BASE / f"outside-{box.leaf}"
    subprocess.run(["zfs", "create", "-o", f"mountpoint={outside}", parent], check=True)
    try:
        refused(cli("bundle", "import", str(bundle), "--into", f"{parent}/copy"), "dsg-storage:mountpoint")
        assert not box.exists(f"{parent}/copy")
        assert [d for d in zfs_mounts() if d.startswith(parent)] == [parent]  # nothing mounted below it

        into, mnt = f"{parent}/inside", MNT / f"{box.leaf}-copy"
        done = cli("--json", "bundle", "import", str(bundle), "--into", into, "--mountpoint", str(mnt))
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["owner"] == f"{USER}:{USER}"
        assert (mnt / "a.txt").read_text() == "alpha\n" and zfs_mounts()[into] == [str(mnt)]
        assert list(Path("/var/tmp").glob("*.dsgb")) == []  # the copy had no name and is gone
    finally:
        subprocess.run(["zfs", "destroy", "-r", parent], check=True)
        bundle.unlink()
        if outside.exists():  # zfs create made it; zfs destroy leaves it
            outside.rmdir()


def test_an_import_into_the_callers_own_repository_is_refused_before_anything_changes(
    box: Box, exclusive_pool: None
) -> None:
    """Issue #23: a child of the caller's repository inherits a mountpoint inside a
    directory the caller owns (the repository's root), where they can plant a link to a
    system directory. With or without the link, the import is refused while nothing has
    happened: no dataset is received, so the next `zfs mount -a` (a boot, a `zpool
    import`) has nothing to follow the link with. A begin there is refused the same way."""
    make_repo(box, {"a.txt": "alpha\n"})
    bundle = USER_OUT / f"{box.leaf}.dsgb"
    assert cli("bundle", "export", box.dataset, "-o", str(bundle)).returncode == 0
    standin = BASE / f"standin-etc-{box.leaf}"  # root's, as /etc is
    standin.mkdir(mode=0o755)
    into = f"{box.dataset}/sub"
    try:
        for planted in (False, True):
            if planted:
                link = box.mnt / "sub"
                link.symlink_to(standin)
                os.lchown(link, USER, USER)
            refused(cli("bundle", "import", str(bundle), "--into", into), f"owned by uid {USER}")
            refused(cli("begin", into, "--mountpoint", str(box.mnt / "sub")), f"owned by uid {USER}")
            listed = subprocess.run(
                ["zfs", "list", "-H", "-o", "name", "-r", box.dataset], check=True, capture_output=True, text=True
            )
            assert listed.stdout.split() == [box.dataset], planted  # no received or temporary dataset
            subprocess.run(["zfs", "mount", "-a"], check=True)
            assert list(standin.iterdir()) == [] and not os.path.ismount(standin), planted
            assert (box.mnt / "a.txt").read_text() == "alpha\n" and zfs_mounts()[box.dataset] == [str(box.mnt)]
    finally:
        bundle.unlink()
        standin.rmdir()


def exported_by_the_caller(box: Box, files: dict[str, str | bytes]) -> Path:
    """A committed repository with ``files``, exported through sudo into a file of the caller's."""
    begun = cli("--json", "begin", box.dataset, "--mountpoint", str(box.mnt))
    assert begun.returncode == 0, begun.stderr
    tx = json.loads(begun.stdout)
    for rel, content in files.items():
        target = Path(tx["path"], rel)
        target.write_bytes(content) if isinstance(content, bytes) else target.write_text(content)
    assert cli("commit", box.dataset, tx["tx"]).returncode == 0
    bundle = USER_OUT / f"{box.leaf}.dsgb"
    done = cli("bundle", "export", box.dataset, "-o", str(bundle))
    assert done.returncode == 0, done.stderr
    return bundle


def test_roots_private_copy_is_bounded_and_made_only_of_a_bundle(box: Box) -> None:
    """Issue #23: the caller's file is checked on their own descriptor before root copies
    it, and the copy is bounded: a file that is not a bundle, a sparse one (free for the
    caller, its whole size for root) and one over the policy's max_size are refused
    before anything changes, and the import still works for one that is none of these."""
    bundle = exported_by_the_caller(box, {"a.bin": os.urandom(256 << 10)})
    into, mnt = f"{box.dataset}-copy", MNT / f"{box.leaf}-copy"
    args = ("bundle", "import", "--into", into, "--mountpoint", str(mnt))

    def import_(path: Path) -> subprocess.CompletedProcess[str]:
        return cli(*args[:2], str(path), *args[2:])

    zeros = USER_OUT / f"{box.leaf}-zeros.dsgb"  # 20 MiB that are not a bundle: never copied
    with open(zeros, "wb") as f:
        f.writelines(bytes(1 << 20) for _ in range(20))
    os.chown(zeros, USER, USER)
    result = import_(zeros)
    assert result.returncode == 9 and "larger than" not in result.stderr, result.stderr  # its ends, first

    holed = USER_OUT / f"{box.leaf}-holed.dsgb"
    subprocess.run(["cp", "--sparse=never", str(bundle), str(holed)], check=True)
    subprocess.run(["fallocate", "--punch-hole", "--offset", "65536", "--length", "65536", str(holed)], check=True)
    os.chown(holed, USER, USER)
    refused_bad = import_(holed)
    assert refused_bad.returncode == 2 and "sparse" in refused_bad.stderr, refused_bad.stderr
    assert not box.exists(into) and not mnt.exists()

    assert import_(bundle).returncode == 0
    assert (mnt / "a.bin").stat().st_size == 256 << 10
    for path in (zeros, holed, bundle):
        path.unlink()


def test_a_bundle_over_the_policys_max_size_is_refused_before_it_is_copied(box: Box) -> None:
    bundle = exported_by_the_caller(box, {"big.bin": os.urandom(MAX_BUNDLE + (1 << 20))})
    into = f"{box.dataset}-copy"
    refused(
        cli("bundle", "import", str(bundle), "--into", into, "--mountpoint", str(MNT / f"{box.leaf}-c")), "max_size"
    )
    assert not box.exists(into)
    bundle.unlink()


def test_signed_bundles_work_through_sudo_with_the_policys_signers(box: Box, tmp_path: Path) -> None:
    """The README's signed sudo example, as written: the caller's FILE.sig is read as the
    caller beside their bundle, checked against the allowed-signers file the policy names
    (root's); another --allowed-signers is refused. The audit line names the caller's
    path, the file's identity and the sha256 of what was imported."""
    make_repo(box, {"a.txt": "alpha\n"})
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "alice", "-f", str(key)], check=True)
    signers = Path(SIGNERS)
    signers.write_text(f'alice@office namespaces="dsg-storage" {key.with_suffix(".pub").read_text()}')
    signers.chmod(0o644)
    bundle, lock = USER_OUT / f"{box.leaf}.dsgb", USER_OUT / f"{box.leaf}.lock"
    for made in (
        cli("bundle", "export", box.dataset, "-o", str(bundle), "--sign", str(key), sudo=False),
        cli("lock", box.dataset, "-o", str(lock), "--sign", str(key), sudo=False),
    ):
        assert made.returncode == 0, made.stderr
    for path in (bundle, Path(f"{bundle}.sig"), lock, Path(f"{lock}.sig")):
        os.chown(path, USER, USER)  # the caller's own files, as if they had copied them in
    into, mnt = f"{box.dataset}-copy", MNT / f"{box.leaf}-copy"
    signed = ("--allowed-signers", SIGNERS, "--require-signature")
    try:
        verified = cli("--json", "bundle", "verify", str(bundle), *signed)
        assert verified.returncode == 0 and json.loads(verified.stdout)["signer"] == "alice@office", verified.stderr
        matched = cli("--json", "verify", "--lock", str(lock), box.dataset, *signed)
        assert matched.returncode == 0 and json.loads(matched.stdout)["signer"] == "alice@office", matched.stderr
        other = tmp_path / "mine"
        other.write_text(signers.read_text())
        refused(cli("bundle", "verify", str(bundle), "--allowed-signers", str(other)), SIGNERS)

        imported = cli("--json", "bundle", "import", str(bundle), "--into", into, "--mountpoint", str(mnt), *signed)
        assert imported.returncode == 0, imported.stderr
        assert json.loads(imported.stdout)["signer"] == "alice@office"
        assert (mnt / "a.txt").read_text() == "alpha\n"
        line = json.loads(AUDIT_LOG.read_text().splitlines()[-1])
        st = bundle.stat()
        assert line["file"] == str(bundle) and line["into"] == into and line["result"] == "ok"
        assert line["source"] == {"device": st.st_dev, "inode": st.st_ino, "size": st.st_size}
        assert line["sha256"] == hashlib.sha256(bundle.read_bytes()).hexdigest()

        Path(f"{bundle}.sig").unlink()  # unsigned now: the policy's require_signed stance still holds
        unsigned = cli("bundle", "import", str(bundle), "--into", f"{into}2", "--mountpoint", str(mnt) + "2", *signed)
        assert unsigned.returncode == 9 and f"no {bundle}.sig" in unsigned.stderr, unsigned.stderr
        assert not box.exists(f"{into}2")
    finally:
        signers.write_text("")
        for path in (bundle, lock, Path(f"{lock}.sig")):
            path.unlink(missing_ok=True)


def test_an_export_through_sudo_removes_the_callers_stale_signature(box: Box) -> None:
    """A stale OUTPUT.sig would not match the new bundle: removed, as the caller, through
    the output's checked directory (``OutputFile.remove_beside``; the race of a swapped
    directory is shown in tests/unit/test_hostfs.py)."""
    make_repo(box)
    bundle = USER_OUT / f"{box.leaf}.dsgb"
    stale = Path(f"{bundle}.sig")
    stale.write_text("stale")
    os.chown(stale, USER, USER)
    assert cli("bundle", "export", box.dataset, "-o", str(bundle)).returncode == 0
    assert not stale.exists() and bundle.stat().st_uid == USER
    bundle.unlink()


# ---------------------------------------------------------------------- hostfs on ZFS
def test_mount_at_mounts_through_the_descriptor_not_the_path(box: Box) -> None:
    """The directory is swapped for a link to a root directory after it was opened: the
    dataset lands on the directory that was checked, never on the link's target."""
    subprocess.run(["zfs", "create", "-o", "mountpoint=none", box.dataset], check=True)
    target = MNT / f"{box.leaf}-m"
    target.mkdir()
    elsewhere = MNT / f"{box.leaf}-moved"
    victim_dir = BASE / f"{box.leaf}-etc"
    victim_dir.mkdir()
    parent_fd, name = hostfs.check_mount_parent(str(target))
    dirfd = hostfs.make_mount_dir(parent_fd, name)
    try:
        target.rename(elsewhere)
        target.symlink_to(victim_dir)
        hostfs.mount_at(box.dataset, dirfd)
        assert zfs_mounts()[box.dataset] == [str(elsewhere)]
        assert os.path.ismount(elsewhere) and not os.path.ismount(victim_dir)
        with pytest.raises(UnsafePathError, match="symbolic link"):
            hostfs.open_mounted_root(parent_fd, name, box.dataset)  # the swapped-in link
        moved_fd = hostfs.open_dir(str(MNT))
        root = hostfs.open_mounted_root(moved_fd, elsewhere.name, box.dataset)
        os.close(moved_fd)
        try:
            hostfs.chown_root(root, box.dataset, USER, USER, 0o750)
            with pytest.raises(UnsafePathError):
                hostfs.chown_root(dirfd, box.dataset, 0, 0, 0o755)  # the directory under the mount
            os.mkdir("sub", dir_fd=root)
            sub = os.open("sub", os.O_RDONLY | os.O_DIRECTORY, dir_fd=root)
            with pytest.raises(UnsafePathError, match="not its root"):
                hostfs.chown_root(sub, box.dataset, 0, 0, 0o755)
            os.close(sub)
            with pytest.raises(UnsafePathError):
                hostfs.chown_root(root, f"{box.dataset}-other", 0, 0, 0o755)
        finally:
            os.close(root)
        st = elsewhere.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (USER, USER, 0o750)
        assert victim_dir.stat().st_uid == 0 and list(victim_dir.iterdir()) == []
        subprocess.run(["umount", str(elsewhere)], check=True)
        assert hostfs.remove_mount_dir(parent_fd, elsewhere.name)
        with pytest.raises(UnsafePathError):
            hostfs.remove_mount_dir(parent_fd, name)  # the link: left alone
        assert target.is_symlink() and victim_dir.is_dir()
    finally:
        os.close(dirfd)
        os.close(parent_fd)
        target.unlink(missing_ok=True)
        victim_dir.rmdir()
