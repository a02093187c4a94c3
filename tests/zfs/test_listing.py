"""Both ways the boundary lists (``zfs.listing``): channel programs, and the ``zfs``
commands the read-only commands use so as not to load libzfs_core, give the same
answers on a real pool; so does the pool-wide read ``recover --pool`` cuts each
repository's family from (``families``). And what is too big for a channel program's
limits: a list (read by ``zfs get`` instead) and a batch (given the limits it needs)."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dsg_storage import Repository, names
from dsg_storage.core.prune import prune
from dsg_storage.core.retention import RetentionPolicy
from dsg_storage.core.view import family_in
from dsg_storage.errors import NoSpaceError, ZfsError
from dsg_storage.names import PROP_PREFIX
from dsg_storage.zfs import programs
from dsg_storage.zfs.boundary import Zfs, open_zfs
from dsg_storage.zfs.errors import ProgramLimitError
from dsg_storage.zfs.limits import DEFAULT_LIMITS
from dsg_storage.zfs.listing import CommandListing, ZfsCommand, snapshot_of
from dsg_storage.zfs.mounts import MS_NOEXEC, MS_NOSUID
from dsg_storage.zfs.programs import Batch, on_off
from dsg_storage.zfs.reads import FamilyRead, ForeignRead, MountFlagsRead

from .cli import dsg_json, with_src
from .conftest import Sandbox
from .test_replication import send_receive
from .test_transactions import OWNER

MESSAGE = "first\n\twith a second line"  # a newline and a tab: what -H text cannot carry


def same(listed: dict[str, dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Values as text; ``zoned`` by name (a channel program reports it as a number)."""
    return {
        name: {k: on_off(v) if k == "zoned" else str(v) for k, v in props.items()} for name, props in listed.items()
    }


def history_reads_agree(commands: Zfs, programs: Zfs, datasets: list[str], missing: str) -> None:
    """History's read (the origin and the snapshots: one ``zfs get`` by commands) answers
    as the two reads it stands for, and fails for a dataset that does not exist."""
    for name in datasets:
        for listing in (commands, programs):
            origin, snaps = listing.origin_and_snapshots(name)
            assert origin == programs.filesystems(name)[name].get("origin", ""), name
            assert snaps == programs.snapshots(name), name
            assert ".dsg-ws-" not in name or "@dsg-base-" in origin, name  # a workspace: a clone
    for listing in (commands, programs):
        with pytest.raises(ZfsError):  # the reader then says the repository does not exist
            listing.origin_and_snapshots(missing)
        with pytest.raises(ZfsError):
            listing.origin_and_snapshots(missing, guarded=True)


def guarded_reads_agree(commands: Zfs, programs: Zfs, datasets: list[str], held: str, cloned: tuple[str, str]) -> None:
    """Prune's read (the history with each snapshot's holds and clones: one ``zfs get`` of
    our known properties, by the library too) answers as the history read the library
    makes by programs, both boundaries alike, with the holds and clones a ``zfs get`` of
    them reports; ``held`` is held meanwhile, and ``cloned`` is (a snapshot, its one
    clone)."""
    subprocess.run(["zfs", "hold", "mine", held], check=True)
    try:
        seen = _guards_agree(commands, programs, datasets)
    finally:
        subprocess.run(["zfs", "release", "mine", held], check=True)
    assert seen[held] == (1, ()) and seen[cloned[0]] == (0, (cloned[1],))  # what the comparison covered


def _guards_agree(
    commands: Zfs, programs: Zfs, datasets: list[str]
) -> dict[str, tuple[int | None, tuple[str, ...] | None]]:
    seen: dict[str, tuple[int | None, tuple[str, ...] | None]] = {}
    for name in datasets:
        by_commands, by_programs = (z.origin_and_snapshots(name, guarded=True) for z in (commands, programs))
        assert by_commands == by_programs == programs.origin_and_snapshots(name), name
        guards = {s.name: (s.holds, s.clones) for s in by_programs[1]}
        assert guards == {s.name: (s.holds, s.clones) for s in by_commands[1]}, name
        get = ["zfs", "get", "-H", "-p", "-o", "name,property,value", "-t", "snapshot", "-d", "1", "userrefs,clones"]
        listed: dict[str, dict[str, str]] = {}
        for line in subprocess.run([*get, name], capture_output=True, text=True, check=True).stdout.splitlines():
            snap, prop, value = line.split("\t")
            listed.setdefault(snap, {})[prop] = value
        for snap, (holds, clones) in guards.items():
            expected = tuple(sorted(c for c in listed[snap]["clones"].split(",") if c not in ("", "-")))
            assert (holds, None if clones is None else tuple(sorted(clones))) == (
                int(listed[snap]["userrefs"]),
                expected,
            ), snap
        seen.update(guards)
    return seen


def test_programs_and_commands_list_the_same(sandbox: Sandbox) -> None:
    parent = f"{sandbox.dataset}/here"
    sandbox.zfs.create(parent, {"mountpoint": str(sandbox.mount_dir / "here")})
    repo = Repository(f"{parent}/survey", zfs=sandbox.zfs)
    first = repo.begin(mountpoint=str(sandbox.mount_dir / "survey"), owner=OWNER, mode="0750")
    Path(first.path, "a.txt").write_text("a")
    first.commit(MESSAGE)
    subprocess.run(["zfs", "set", "com.example:note=a\tb\nc", repo.name], check=True)  # another tool's
    subprocess.run(["zfs", "snapshot", f"{repo.name}@autosnap"], check=True)
    subprocess.run(["zfs", "set", "com.sun:auto-snapshot=true", f"{repo.name}@autosnap"], check=True)
    subprocess.run(["zfs", "set", "setuid=off", "exec=off", repo.name], check=True)  # carried to its workspace
    plain = Repository(f"{parent}/plain", zfs=sandbox.zfs)  # inherits its mountpoint: no zoned
    with plain.begin(mountpoint=str(sandbox.mount_dir / "here" / "plain"), owner=OWNER) as tx:
        Path(tx.path, "b.txt").write_text("b")
    open_tx = repo.begin()  # a workspace: a clone, zoned, with its record
    subprocess.run(["zfs", "snapshot", "-r", f"{parent}@rep"], check=True)
    send_receive(["-R", f"{parent}@rep"], ["-u", "-x", "mountpoint", f"{sandbox.dataset}/there"])
    replica = f"{sandbox.dataset}/there/survey"
    # a filesystem below a repository: not part of its history read
    subprocess.run(["zfs", "create", "-o", "mountpoint=none", f"{plain.name}/nested"], check=True)

    programs, commands = sandbox.zfs, open_zfs(sandbox.allow, listing="commands")
    everything = CommandListing(ZfsCommand())  # what a read-only pool is listed with: all of ours
    assert commands.listing.programs  # as root, `zfs program` of the family read
    by_names = CommandListing(ZfsCommand(), known=names.OUR_PROPS)  # not root: the two commands
    for name in (repo.name, plain.name, replica, f"{parent}/none"):
        assert same(commands.family(name)) == same(programs.family(name)), name
        assert same(by_names.family(name, PROP_PREFIX)) == same(programs.family(name)), name
        if name != f"{parent}/none":
            assert commands.snapshots(name) == programs.snapshots(name), name
            full = sorted(map(snapshot_of, everything.snapshots(name, PROP_PREFIX)), key=lambda s: s.createtxg)
            assert full == programs.snapshots(name), name
    history_reads_agree(commands, programs, [repo.name, plain.name, replica, open_tx.dataset], f"{parent}/none")
    guarded_reads_agree(
        commands,
        programs,
        [repo.name, plain.name, replica, open_tx.dataset],
        held=f"{repo.name}@autosnap",
        cloned=(f"{repo.name}@dsg-base-{open_tx.id}", open_tx.dataset),
    )
    for under in (sandbox.dataset, f"{parent}/none"):
        assert same(commands.filesystems(under)) == same(programs.filesystems(under)), under
        assert same(everything.filesystems(under, PROP_PREFIX)) == same(programs.filesystems(under)), under
    # what the comparison covered
    family = programs.family(repo.name)
    assert len(family) == 3 and family[repo.name]["com.example:note"] == "a\tb\nc"
    assert on_off(family[open_tx.dataset]["zoned"]) == "on" and "origin" in family[open_tx.dataset]
    assert (
        programs.family(replica)[replica]["@received"] == "yes" and programs.family(replica)[replica]["setuid"] == "off"
    )  # setuid received with it
    assert (family[repo.name]["setuid"], family[repo.name]["exec"], "devices" in family[repo.name]) == (
        "off",
        "off",
        False,
    )
    assert (family[open_tx.dataset]["setuid"], family[open_tx.dataset]["exec"]) == ("off", "off")
    assert {"autosnap", "rep", f"dsg-base-{open_tx.id}"} <= {s.short_name for s in programs.snapshots(repo.name)}

    by_commands = commands.families(sandbox.dataset)  # recover --pool's read: ours only
    for name, props in programs.families(sandbox.dataset).items():
        ours = {k: v for k, v in props.items() if ":" not in k or k.startswith(PROP_PREFIX)}
        assert same({name: by_commands[name]}) == same({name: ours}), name
    assert same(everything.families(sandbox.dataset, PROP_PREFIX)) == same(programs.families(sandbox.dataset))
    listing = programs.families(sandbox.dataset)
    for name in (repo.name, plain.name, replica):
        assert same(family_in(listing, name) or {}) == same(programs.family(name)), name

    # and the commands that list this way answer as before
    status = dsg_json("status", repo.name, allow=sandbox.dataset)
    assert [p["tx"] for p in status["pending"]] == [open_tx.id] and status["last_commit"]["message"] == MESSAGE
    history = dsg_json("history", repo.name, allow=sandbox.dataset)
    assert [c["message"] for c in history] == [MESSAGE]
    open_tx.rollback()


def test_reads_asked_together_answer_as_each_alone(sandbox: Sandbox) -> None:
    """One program for the reads of one moment (a commit's): the family, what other tools
    made of a workspace with what the repository wrote since the base, the mount flags."""
    repo = Repository(f"{sandbox.dataset}/together", zfs=sandbox.zfs)
    with repo.begin(mountpoint=str(sandbox.mount_dir / "together"), owner=OWNER) as first:
        Path(first.path, "a.txt").write_text("a")
    subprocess.run(["zfs", "set", "setuid=off", "exec=off", repo.name], check=True)
    tx = repo.begin()
    subprocess.run(["zfs", "snapshot", f"{tx.dataset}@autosnap"], check=True)  # another tool's, of the work
    Path(sandbox.mount_dir / "together" / "late.txt").write_text("written after begin")
    subprocess.run(["zfs", "snapshot", f"{repo.name}@synced"], check=True)  # every write on disk
    zfs = sandbox.zfs
    bases = names.base_places(repo.name, tx.id)
    reads = FamilyRead(repo.name), ForeignRead(tx.dataset, bases, written_of=repo.name), MountFlagsRead(repo.name)
    family, foreign, flags = zfs.together(*reads)
    assert family == zfs.family(repo.name)
    alone = zfs.foreign(tx.dataset, bases, written_of=repo.name)
    assert (foreign, foreign.base, foreign.written) == (alone, alone.base, alone.written)
    assert [name for name, _ in foreign.snapshots] == ["autosnap"]
    assert foreign.base == names.base_snapshot(repo.name, tx.id) and foreign.written and foreign.written > 0
    assert flags == zfs.mount_flags(repo.name) == MS_NOSUID | MS_NOEXEC
    assert zfs.foreign(tx.dataset, bases).written is None  # not asked
    tx.rollback()


class Recording(ZfsCommand):
    def __init__(self) -> None:
        super().__init__()
        self.ran: list[tuple[str, ...]] = []

    def __call__(self, *args: str) -> str:
        self.ran.append(args)
        return super().__call__(*args)


def test_the_pool_wide_text_read_gives_way_to_json_for_a_value_with_a_newline(sandbox: Sandbox) -> None:
    """``recover --pool`` reads ``zfs get -H`` text, which a multi-line commit message on
    a workspace (set there until the commit snapshot has it) would break: the read is
    made again as JSON, and both answer as the channel program does."""
    repo = Repository(f"{sandbox.dataset}/texts", zfs=sandbox.zfs)
    with repo.begin(mountpoint=str(sandbox.mount_dir / "texts"), owner=OWNER) as first:
        Path(first.path, "a.txt").write_text("a")
    tx = repo.begin()
    for message, ways in (("one line", [["-H"]]), ("fix\n\nsecond\tline", [["-H"], ["-j"]])):
        subprocess.run(["zfs", "set", f"{names.P_COMMIT_MESSAGE}={message}", tx.dataset], check=True)
        run = Recording()
        listing = CommandListing(run, known=names.OUR_PROPS, on_snapshots=names.SNAPSHOT_PROPS)
        by_commands = listing.families(sandbox.dataset, PROP_PREFIX)
        assert [[w for w in ("-H", "-j") if w in args] for args in run.ran] == ways
        by_programs = sandbox.zfs.families(sandbox.dataset)
        assert by_commands[tx.dataset][names.P_COMMIT_MESSAGE] == message
        assert same({n: by_commands[n] for n in (repo.name, tx.dataset)}) == same(
            {
                n: {k: v for k, v in by_programs[n].items() if ":" not in k or k.startswith(PROP_PREFIX)}
                for n in (repo.name, tx.dataset)
            }
        )
    tx.rollback()


def test_reads_of_one_repository_at_the_command_line_load_no_libzfs_core(sandbox: Sandbox, tmp_path: Path) -> None:
    """``history``, ``status``, ``ls``, ``stat``, ``cat`` (also of an old commit),
    ``prune --dry-run``, ``lock`` and ``verify`` read by ``zfs`` commands: loading the bindings would cost more
    than the read (~0.7 s under emulation). Whether a name exists is one ``zfs list``."""
    repo = Repository(f"{sandbox.dataset}/light", zfs=sandbox.zfs)
    with repo.begin(mountpoint=str(sandbox.mount_dir / "light"), owner=OWNER) as tx:
        Path(tx.path, "a.txt").write_text("old")
    with repo.begin() as tx:
        Path(tx.path, "a.txt").write_text("new")
    first = repo.history()[0].name
    commands = open_zfs(sandbox.allow, listing="commands")
    for name in (repo.name, f"{repo.name}@{first}", f"{repo.name}@nope", f"{sandbox.dataset}/none"):
        assert commands.exists(name) == sandbox.zfs.exists(name), name
    reads = {
        "history": [repo.name],
        "status": [repo.name],
        "ls": [repo.name, ""],
        "stat": [repo.name, "a.txt"],
        "cat": [repo.name, "a.txt", "--commit", first],
        "prune": [repo.name, "--keep-last", "1", "--dry-run"],
        "lock": [repo.name, "-o", str(tmp_path / "light.lock")],
        "verify": ["--lock", str(tmp_path / "light.lock"), repo.name],
    }
    for command, args in reads.items():
        argv = [sys.executable, "-X", "importtime", "-m", "dsg_storage", "--json", "--allow", sandbox.dataset]
        done = subprocess.run([*argv, command, *args], capture_output=True, text=True, env=with_src(), check=False)
        assert done.returncode == 0, (command, done.stderr[-2000:])
        assert "libzfs_core" not in done.stderr, command
    cat = dsg_json("cat", repo.name, "a.txt", "--commit", first, allow=sandbox.dataset)
    assert base64.b64decode(cat["content_base64"]) == b"old"


class TightPrograms:
    """libzfs_core with every read-only program held to ``memlimit`` bytes, whatever the
    boundary asks: the kernel's own refusal of a list too big for one program, on a list
    small enough for a test (a snapshot with our properties takes ~1 KiB of it)."""

    def __init__(self, memlimit: int) -> None:
        import libzfs_core

        self.real, self.memlimit = libzfs_core, memlimit

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def lzc_channel_program_nosync(self, pool: bytes, program: bytes, **kwargs: Any) -> Any:
        return self.real.lzc_channel_program_nosync(pool, program, memlimit=self.memlimit, params=kwargs["params"])


def test_a_list_too_big_for_one_program_is_read_by_zfs_get(sandbox: Sandbox) -> None:
    repo = Repository(f"{sandbox.dataset}/long", zfs=sandbox.zfs)
    for n in range(3):
        tx = repo.begin(mountpoint=str(sandbox.mount_dir / "long"), owner=OWNER)
        Path(tx.path, "a.txt").write_text(f"commit {n}")
        tx.commit(f"commit {n}")
    for n in range(12):  # another tool's snapshots, ours among their properties
        subprocess.run(["zfs", "snapshot", "-o", f"{PROP_PREFIX}note=n{n}", f"{repo.name}@s{n}"], check=True)
    normal = sandbox.zfs
    tight = Zfs(sandbox.allow, lzc=TightPrograms(24 << 10))  # ~3 snapshots fit
    # the kernel refuses the long read: what answers below is the fallback
    with pytest.raises(ProgramLimitError, match="too big for one channel program"):
        tight.program(names.pool_of(repo.name), programs.SNAPSHOTS, [repo.name, PROP_PREFIX], sync=False)

    listed = normal.snapshots(repo.name)
    assert len(listed) == 15 and listed[-1].user_props == {f"{PROP_PREFIX}note": "n11"}  # what is compared
    assert tight.snapshots(repo.name) == listed
    for guarded in (False, True):
        origin, snaps = tight.origin_and_snapshots(repo.name, guarded=guarded)
        assert (origin, snaps) == normal.origin_and_snapshots(repo.name, guarded=guarded)
        assert [(s.holds, s.clones) for s in snaps] == [
            (s.holds, s.clones) for s in normal.origin_and_snapshots(repo.name, guarded=guarded)[1]
        ]
    assert same(tight.filesystems(sandbox.dataset)) == same(normal.filesystems(sandbox.dataset))
    assert same(tight.families(sandbox.dataset)) == same(normal.families(sandbox.dataset))
    assert [c.message for c in Repository(repo.name, zfs=tight).history()] == ["commit 0", "commit 1", "commit 2"]
    assert Repository(repo.name, zfs=tight).history() == repo.history()
    plans = [prune(Repository(repo.name, zfs=z), RetentionPolicy(last=1), dry_run=True).plan for z in (tight, normal)]
    assert plans[0] == plans[1] and len(plans[0].destroy) == 2


def test_a_batch_bigger_than_pyzfs_default_memory_applies_in_one_sync_task(sandbox: Sandbox) -> None:
    """A bundle's import sets the properties of every snapshot it carries in one batch
    (~1.2 KiB of program memory each: ~8,700 commits filled pyzfs's default 10 MiB).
    Here 2,600 changes of 4 KiB values (~11 MB of arguments) stand for them."""
    target = f"{sandbox.dataset}/props"
    sandbox.zfs.create(target, {"mountpoint": "none"})
    values = [f"{i:06d}" + "v" * 4090 for i in range(2600)]
    batch = Batch().set_each((target, {f"{PROP_PREFIX}note": value}) for value in values)
    assert sum(map(len, batch.ops)) > 10 << 20  # past the default limit by its arguments alone
    with pytest.raises(NoSpaceError, match="ZCPSpaceError"):  # what pyzfs's defaults gave
        sandbox.zfs.program(names.pool_of(target), programs.BATCH, batch.ops, sync=True, limits=DEFAULT_LIMITS)
    syncs = sandbox.zfs.steps.syncs
    sandbox.zfs.apply(batch)
    assert sandbox.zfs.steps.syncs == syncs + 1
    got = subprocess.run(
        ["zfs", "get", "-H", "-o", "value", f"{PROP_PREFIX}note", target], capture_output=True, text=True, check=True
    )
    assert got.stdout.strip() == values[-1]  # in order: the last change wins
