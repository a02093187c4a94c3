"""Bundles from somebody else, on real ZFS: nothing of the author's gives privilege, lying
streams are refused with the target untouched, no write is lost during an incremental
import, signatures and the audit log end to end."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import tempfile
from functools import partial
from pathlib import Path

import pytest

from dsg_storage import BundleError, ConflictError, DatasetBusyError, Repository
from dsg_storage.transfer.export import export_bundle
from dsg_storage.transfer.importing import import_bundle
from dsg_storage.zfs.boundary import Zfs
from dsg_storage.zfs.mounts import zfs_mounts
from tests import craft

from .cli import dsg, with_src
from .conftest import Sandbox
from .test_bundles import commit, copy_of_first_two_commits, files, history, state

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture
def source(sandbox: Sandbox) -> Repository:
    repo = Repository(f"{sandbox.dataset}/src", allow=sandbox.allow)
    for n in range(3):
        commit(repo, sandbox.mount_dir / "src", {"a.txt": f"v{n}"}, f"commit {n}")
    return repo


def audit_log(tmp_path: Path) -> str:
    return str(tmp_path / "audit" / "audit.log")


def plant_privileges(repo: Repository, mnt: Path) -> None:
    """A commit holding a setuid-root copy of bash and a device node anyone may open (in a
    root directory anyone may enter)."""
    with repo.begin(mountpoint=str(mnt), mode="0755") as tx:
        shell = Path(tx.path, "rootshell")
        shell.write_bytes(Path("/bin/bash").read_bytes())
        os.chown(shell, 0, 0)
        os.chmod(shell, 0o4755)
        os.mknod(Path(tx.path, "zero"), stat.S_IFCHR | 0o666, os.makedev(1, 5))
        os.chmod(Path(tx.path, "zero"), 0o666)  # (mknod honours the umask)
        tx.commit("privileges")


def reachable_by_nobody(path: Path) -> None:
    """Let anyone traverse the directories down to ``path`` (pytest makes its own 0700)."""
    for parent in [path, *path.parents]:
        parent.chmod(parent.stat().st_mode | 0o111)


def euid_as_nobody(mnt: Path) -> str:
    run = subprocess.run(
        [*NOBODY, str(mnt / "rootshell"), "-p", "-c", "id -u"], capture_output=True, text=True, check=False
    )
    return run.stdout.strip() or run.stderr.strip()


def device_opens_as_nobody(mnt: Path) -> bool:
    run = subprocess.run([*NOBODY, "head", "-c", "1", str(mnt / "zero")], capture_output=True, text=True, check=False)
    assert run.returncode == 0 or "Permission denied" in run.stderr, run.stderr  # refused, not missing
    return run.returncode == 0


def mount_options(dataset: str) -> set[str]:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[:2] == ["zfs", dataset]:
            return set(left.split()[5].split(","))
    return set()


def zfs_get(prop: str, dataset: str) -> str:
    out = subprocess.run(["zfs", "get", "-H", "-o", "value", prop, dataset], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_setuid_files_and_devices_from_a_bundle_give_nothing(
    sandbox: Sandbox, source: Repository, tmp_path: Path
) -> None:
    src_mnt = sandbox.mount_dir / "src"
    base = source.history()[-1].name
    plant_privileges(source, src_mnt)
    reachable_by_nobody(sandbox.mount_dir)
    # the control: where setuid is honoured, the planted shell is root for anyone
    assert euid_as_nobody(src_mnt) == "0" and device_opens_as_nobody(src_mnt)

    export_bundle(source.name, tmp_path / "full.dsgb", audit_log=audit_log(tmp_path))
    target = Repository(f"{sandbox.dataset}/dst", allow=sandbox.allow)
    mnt = sandbox.mount_dir / "dst"
    result = import_bundle(
        tmp_path / "full.dsgb", target.name, mountpoint=str(mnt), allow=sandbox.allow, audit_log=audit_log(tmp_path)
    )
    assert (mnt / "rootshell").stat().st_mode & 0o4000  # the bit travelled, but it is inert
    assert euid_as_nobody(mnt) == "65534"
    assert not device_opens_as_nobody(mnt)
    with pytest.raises(PermissionError):
        (mnt / "zero").open("rb")  # not even root opens a device on a nodev mount
    with (src_mnt / "zero").open("rb") as control:
        assert control.read(1) == b"\0"
    assert {"nosuid", "nodev"} <= mount_options(target.name)
    assert (zfs_get("setuid", target.name), zfs_get("devices", target.name)) == ("off", "off")
    # A commit freezes the live mount (a read-only remount) and thaws it when it cannot go
    # on; a remount sets a mount's flags anew, and nosuid and nodev stay throughout.
    tx = target.begin()
    (mnt / "written-outside.txt").write_text("x")  # after begin: the commit is refused
    with pytest.raises(ConflictError):
        tx.commit()
    assert {"nosuid", "nodev", "rw"} <= mount_options(target.name)
    tx.rollback()
    (mnt / "written-outside.txt").unlink()
    # owner and mode are the importer's (the invoking user, 0755), not the bundle's
    st = os.stat(mnt)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (os.getuid(), os.getgid(), 0o755)
    assert (result.owner, result.mode) == (f"{os.getuid()}:{os.getgid()}", "0755")
    # A transaction's workspace is a clone, and a clone takes its properties from its
    # parent, not from its origin: setuid=off and devices=off must go with it, while it is
    # open and once it is the repository.
    with target.begin() as tx:
        workspace = Path(tx.path)
        reachable_by_nobody(workspace)
        assert euid_as_nobody(workspace) == "65534" and not device_opens_as_nobody(workspace)
        (workspace / "note.txt").write_text("a change after the import")
        tx.commit("after the import")
    assert (zfs_get("setuid", target.name), zfs_get("devices", target.name)) == ("off", "off")
    assert {"nosuid", "nodev"} <= mount_options(target.name)
    assert euid_as_nobody(mnt) == "65534" and not device_opens_as_nobody(mnt)

    # an incremental bundle onto a repository made here (setuid inherited on) is defused too
    other = Repository(f"{sandbox.dataset}/inc", allow=sandbox.allow)
    other_mnt = sandbox.mount_dir / "inc"
    export_bundle(source.name, tmp_path / "base.dsgb", snapshot=base, audit_log=audit_log(tmp_path))
    export_bundle(source.name, tmp_path / "incr.dsgb", since=base, audit_log=audit_log(tmp_path))
    import_bundle(
        tmp_path / "base.dsgb",
        other.name,
        mountpoint=str(other_mnt),
        allow=sandbox.allow,
        owner="1000:1000",
        mode="0711",
        audit_log=audit_log(tmp_path),
    )
    subprocess.run(["zfs", "inherit", "setuid", other.name], check=True)  # as if it were made here
    subprocess.run(["zfs", "inherit", "devices", other.name], check=True)
    import_bundle(tmp_path / "incr.dsgb", other.name, allow=sandbox.allow, audit_log=audit_log(tmp_path))
    assert (zfs_get("setuid", other.name), zfs_get("devices", other.name)) == ("off", "off")
    assert euid_as_nobody(other_mnt) == "65534" and not device_opens_as_nobody(other_mnt)
    assert {"nosuid", "nodev"} <= mount_options(other.name)
    st = os.stat(other_mnt)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1000, 0o711)  # kept from the first import


def send(sandbox: Sandbox, snapshot: str, source: str | None, directory: Path) -> bytes:
    with tempfile.TemporaryFile(dir=directory) as f:
        sandbox.zfs.send_to(f.fileno(), snapshot, source)
        f.seek(0)
        return f.read()


def test_lying_streams_are_refused_and_the_target_is_untouched(
    sandbox: Sandbox, source: Repository, tmp_path: Path
) -> None:
    target, mnt = copy_of_first_two_commits(sandbox, source, tmp_path)
    c0, c1, c2 = [s for s in sandbox.zfs.snapshots(source.name) if "dsg-commit-" in s.name]
    before = state(sandbox, target, mnt)
    snaps = [(c2.short_name, c2.guid)]
    base = (c1.short_name, c1.guid)  # the target's latest: the claim is right, the streams lie
    cases = {
        "a stream from an older snapshot": (send(sandbox, c2.name, c0.name, tmp_path), "incremental from GUID"),
        "a full stream posing as incremental": (send(sandbox, c2.name, None, tmp_path), "full stream poses"),
    }
    # A BEGIN record rewritten to name the right base: only ZFS's own stream checksum can tell.
    older = bytearray(send(sandbox, c2.name, c0.name, tmp_path))
    older[48:56] = c1.guid.to_bytes(8, "little")
    cases["a rewritten BEGIN record"] = (bytes(older), "ZFS refused part 1")
    for case, (stream, message) in cases.items():
        bundle = craft.repository_bundle(tmp_path / "lie.dsgb", source.name, snaps, base, streams=[stream])
        with pytest.raises(BundleError, match=message):
            import_bundle(bundle, target.name, allow=sandbox.allow, audit_log=audit_log(tmp_path))
        assert state(sandbox, target, mnt) == before, case
        assert sandbox.mounts()[target.name] == [str(mnt)], case
    run = dsg(
        *("bundle", "import", str(bundle), "--into", target.name, "--audit-log", audit_log(tmp_path)),
        allow=sandbox.dataset,
        json=False,
        env=with_src(),
    )
    assert run.returncode == 9 and "ZFS refused part 1" in run.stderr
    results = [json.loads(line)["result"] for line in Path(audit_log(tmp_path)).read_text().splitlines()]
    assert sum(r.startswith("error: BundleError") for r in results) == 4
    import_bundle(tmp_path / "incr.dsgb", target.name, allow=sandbox.allow, audit_log=audit_log(tmp_path))
    assert history(target) == history(source)


def test_no_write_is_lost_during_an_incremental_import(sandbox: Sandbox, source: Repository, tmp_path: Path) -> None:
    target, mnt = copy_of_first_two_commits(sandbox, source, tmp_path)
    mounted_during: list[bool] = []

    def progress(done: int, total: int | None) -> None:
        if total and done > total / 2:  # the second half: the receive (the first is the check)
            mounted_during.append(target.name in zfs_mounts())

    # unmounted for the whole import: no write can come in after the check and be lost
    import_bundle(
        tmp_path / "incr.dsgb", target.name, allow=sandbox.allow, progress=progress, audit_log=audit_log(tmp_path)
    )
    assert mounted_during and not any(mounted_during)
    assert sandbox.mounts()[target.name] == [str(mnt)]
    assert history(target) == history(source) and files(mnt) == files(sandbox.mount_dir / "src")

    # a writer holding a file open: the import cannot unmount, so it refuses and changes nothing
    since = source.history()[-1].name
    commit(source, sandbox.mount_dir / "src", {"a.txt": "later"}, "later")
    export_bundle(source.name, tmp_path / "later.dsgb", since=since, audit_log=audit_log(tmp_path))
    before = history(target)
    with open(mnt / "being-written.txt", "w") as writer:
        writer.write("first half ")
        writer.flush()
        with pytest.raises(DatasetBusyError):
            import_bundle(
                tmp_path / "later.dsgb",
                target.name,
                allow=sandbox.allow,
                zfs=Zfs(sandbox.allow, busy_timeout=0.5),
                audit_log=audit_log(tmp_path),
            )
        writer.write("second half")
    assert (mnt / "being-written.txt").read_text() == "first half second half"
    assert history(target) == before
    # and that write is a change the next import will not discard
    with pytest.raises(ConflictError, match="being-written.txt"):
        import_bundle(tmp_path / "later.dsgb", target.name, allow=sandbox.allow, audit_log=audit_log(tmp_path))
    assert (mnt / "being-written.txt").read_text() == "first half second half"


def test_bundles_others_could_change_are_refused(sandbox: Sandbox, source: Repository, tmp_path: Path) -> None:
    bundle = tmp_path / "b.dsgb"
    export_bundle(source.name, bundle, audit_log=audit_log(tmp_path))
    target = f"{sandbox.dataset}/dst"
    bundle.chmod(0o666)
    with pytest.raises(BundleError, match="writable by its group or by others"):
        import_bundle(
            bundle,
            target,
            mountpoint=str(sandbox.mount_dir / "dst"),
            allow=sandbox.allow,
            audit_log=audit_log(tmp_path),
        )
    bundle.chmod(0o644)
    os.chown(bundle, 65534, 65534)
    with pytest.raises(BundleError, match="belongs to uid 65534"):
        import_bundle(
            bundle,
            target,
            mountpoint=str(sandbox.mount_dir / "dst"),
            allow=sandbox.allow,
            audit_log=audit_log(tmp_path),
        )
    os.chown(bundle, 0, 0)
    with open(bundle, "r+b"), pytest.raises(BundleError, match="open for writing"):  # a writer: no read lease
        import_bundle(
            bundle,
            target,
            mountpoint=str(sandbox.mount_dir / "dst"),
            allow=sandbox.allow,
            audit_log=audit_log(tmp_path),
        )
    assert not Repository(target, allow=sandbox.allow).exists()


def test_signed_bundles_and_lock_files_end_to_end(sandbox: Sandbox, source: Repository, tmp_path: Path) -> None:
    key = tmp_path / "alice"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "alice", "-f", str(key)], check=True)
    kind, blob = (tmp_path / "alice.pub").read_text().split()[:2]
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(f'alice@field-office namespaces="dsg-storage" {kind} {blob}\n')
    log = audit_log(tmp_path)
    cli = partial(dsg, allow=sandbox.dataset, env=with_src())

    bundle = str(tmp_path / "b.dsgb")
    exported = cli("bundle", "export", source.name, "-o", bundle, "--sign", str(key), "--audit-log", log)
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout)["signature_file"] == bundle + ".sig"
    signers = ["--allowed-signers", str(allowed), "--require-signature"]
    verified = cli("bundle", "verify", bundle, *signers)
    assert verified.returncode == 0 and json.loads(verified.stdout)["signer"] == "alice@field-office"
    into = f"{sandbox.dataset}/copy"
    imported = cli(
        *("bundle", "import", bundle, "--into", into, "--mountpoint", str(sandbox.mount_dir / "copy")),
        *(*signers, "--audit-log", log),
    )
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["signer"] == "alice@field-office"
    lines = [json.loads(line) for line in Path(log).read_text().splitlines()]
    export_line, import_line = lines[-2], lines[-1]
    assert (export_line["action"], import_line["action"]) == ("export", "import")
    assert export_line["sha256"] == import_line["sha256"] == json.loads(verified.stdout)["sha256"]
    assert import_line["signer"] == "alice@field-office" and import_line["source_repository"] == source.name
    assert import_line["result"] == "ok" and import_line["user"]
    assert import_line["stream_check"] == "before"  # a checked signature: every byte hashed first
    assert stat.S_IMODE(os.stat(log).st_mode) == 0o600

    lock = str(tmp_path / "src.lock")
    assert cli("lock", source.name, "-o", lock, "--sign", str(key)).returncode == 0
    matched = cli("verify", "--lock", lock, into, *signers)
    assert matched.returncode == 0 and json.loads(matched.stdout)["signer"] == "alice@field-office"
    Path(lock).write_text(Path(lock).read_text().replace(source.name, into))
    altered = cli("verify", "--lock", lock, into, *signers)
    assert altered.returncode == 9 and "altered after signing" in altered.stderr
    unsigned = cli("bundle", "export", source.name, "-o", bundle, "--audit-log", log)
    assert unsigned.returncode == 0 and not Path(bundle + ".sig").exists()
    refused = cli("bundle", "verify", bundle, *signers)
    assert refused.returncode == 9 and "not signed" in refused.stderr
