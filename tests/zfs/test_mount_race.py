"""The symlink race of issue #14, made deterministic (real ZFS).

A sync commit takes the old head off the mount path for a moment (it is detached, and
the new head mounted in its place). Whoever owns the path's parent could swap the empty
directory for a link to somewhere root would then mount the repository and chown it,
e.g. ``/etc``. Here a hook pauses the commit right then, the test swaps the directory
for a link, and the commit goes on: it must mount and chown nothing through the link.
"""

from __future__ import annotations

import os
import traceback
from pathlib import Path

from dsg_storage import Repository
from dsg_storage.zfs.host import BoundaryStep

from .conftest import Sandbox
from .test_transactions import files


def test_a_mount_path_swapped_for_a_link_mid_commit_is_never_mounted_through(sandbox: Sandbox) -> None:
    repo, mnt = Repository(f"{sandbox.dataset}/repo", zfs=sandbox.zfs), sandbox.mount_dir / "repo"
    with repo.begin(mountpoint=str(mnt), owner="1234:5678", mode="0750") as tx:
        Path(tx.path, "f.txt").write_text("old")
    target = sandbox.mount_dir / "etc"  # stands for /etc: root's, must stay as it is
    target.mkdir(mode=0o755)
    (target / "passwd").write_text("root:x:0:0")
    before = os.stat(target)
    tx = repo.begin()
    Path(tx.path, "f.txt").write_text("new")

    paused, resume = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:  # the committing process: pause once the old head is off the path
        code = 1
        try:

            def pause(step: BoundaryStep) -> None:
                if step.op == "detach" and ".dsg-old-" in step.target:
                    os.write(paused[1], b"!")
                    os.read(resume[0], 1)

            sandbox.zfs.steps.observer = pause
            repo.commit(tx.id)
            code = 0
        except BaseException:  # noqa: BLE001 (reported; the exit code says so)
            traceback.print_exc()
        finally:
            os._exit(code)
    assert os.read(paused[0], 1) == b"!"
    os.rmdir(mnt)  # empty now: the old head is detached
    os.symlink(target, mnt)
    os.write(resume[1], b"go")
    _, status = os.waitpid(pid, 0)

    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 1  # the mount was refused
    assert not [paths for paths in sandbox.mounts().values() if str(target) in paths or str(mnt) in paths]
    after = os.stat(target)
    assert (after.st_uid, after.st_gid, after.st_mode) == (before.st_uid, before.st_gid, before.st_mode)
    assert sorted(os.listdir(target)) == ["passwd"]
    # The commit had passed its commit point: once the link is gone, recovery mounts the
    # new content where it belongs.
    os.unlink(mnt)
    repo.recover()
    assert files(mnt) == {"f.txt": "new"}
    assert sandbox.mounts() == {repo.name: [str(mnt)]}
