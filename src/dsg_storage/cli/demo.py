"""A short tour on real ZFS: init, sync, rollback, history. Run by ``dsg-storage demo``
(``demo``, its handler)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..core.repository import Repository
from ..zfs.allow import AllowList
from ..zfs.port import ZfsPort

TYPE_CHECKING = False  # not typing's: see dsg_storage/__init__.py
if TYPE_CHECKING:
    from ..settings import Settings
    from .context import Context

#: The only pool in which ``dsg-storage demo`` adds its ``--parent`` to the allow-list.
DEMO_POOL = "dsgtest"


def _say(text: str) -> None:
    print(text, flush=True)


def _files(path: str) -> str:
    names = sorted(p.name for p in Path(path).iterdir())
    return ", ".join(f"{n}={(Path(path) / n).read_text().strip()!r}" for n in names) or "(empty)"


def demo(ctx: Context) -> int:
    args = ctx.args
    # The demo may add its own parent to the allow-list only inside the test pool.
    own = AllowList((args.parent,)) if args.parent.split("/", 1)[0] == DEMO_POOL else AllowList()
    run_demo(args.parent, args.mount_dir, ctx.zfs(ctx.allow | own), ctx.settings)
    return 0


def run_demo(parent: str, mount_dir: str | None, zfs: ZfsPort, settings: Settings | None = None) -> None:
    if not zfs.exists(parent):
        zfs.create(parent, {"mountpoint": "none"})
        _say(f"created parent dataset {parent}")
    base = Path(mount_dir or tempfile.mkdtemp(prefix="dsg-demo-"))
    name = f"{parent}/survey-{os.getpid()}"
    mountpoint = str(base / "survey")
    repo = Repository(name, zfs=zfs, settings=settings)

    with repo.begin(mountpoint=mountpoint, owner="1000:1000", mode="0750") as tx:
        _say(f"begin   {tx.id}: pattern={tx.pattern.value}, workspace {tx.dataset} at {tx.path}")
        Path(tx.path, "a.txt").write_text("alpha\n")
        Path(tx.path, "b.txt").write_text("beta\n")
    _say(f"commit  -> {repo.history()[-1].snapshot}; {mountpoint}: {_files(mountpoint)}")

    with repo.begin() as tx:
        _say(f"begin   {tx.id}: pattern={tx.pattern.value}, workspace {tx.dataset} at {tx.path}")
        Path(tx.path, "a.txt").write_text("alpha v2\n")
        Path(tx.path, "b.txt").unlink()
        Path(tx.path, "c.txt").write_text("gamma\n")
        tx.commit("second version")
    _say(f"commit  -> {repo.history()[-1].snapshot}; {mountpoint}: {_files(mountpoint)}")

    tx = repo.begin()
    Path(tx.path, "a.txt").write_text("a change we will not keep\n")
    tx.rollback()
    _say(f"rollback {tx.id}; {mountpoint}: {_files(mountpoint)}")

    stat = os.stat(mountpoint)
    _say(f"owner {stat.st_uid}:{stat.st_gid} mode {stat.st_mode & 0o7777:04o} at {mountpoint}")
    _say("history:")
    for commit in repo.history():
        _say(f"  {commit.name}  tx={commit.tx}  message={commit.message or '-'}")
    leftovers = [c for c in zfs.children(parent) if c != name]
    _say(f"temporary datasets left: {leftovers or 'none'}; pending transactions: {len(repo.pending())}")

    # Leave nothing behind on a real machine: the demo repository is only for show.
    zfs.host.unmount(name)
    zfs.destroy_snapshots([c.snapshot for c in repo.history()])
    zfs.destroy(name)
    _say(f"removed {name}")
