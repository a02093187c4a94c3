#!/usr/bin/env python3
"""Build the pool images the userland reader's host tests read (run inside the VM).

    ./testpool/run python3 testpool/userland_images.py OUTDIR [--bench]

Real ZFS makes every image; the host never could. In OUTDIR:

- ``small.img``: pool ``dsgul``, exported, holding three repositories written through
  the library (regular, empty, sparse and hard-linked files, a directory tree, a symbolic
  link, a fifo, extended attributes: in the files' SA under ``repos/`` (``xattr=sa``),
  in hidden directories under ``dirx/`` (``xattr=dir``); several commits), a plain
  dataset that is not a repository; ``small.live.json``: what the kernel's live read of
  it answered (``testpool/parity.read_everything``), the reference the userland answers
  must equal.
- ``crypt.img``: ``dsgul/passphrase`` (``keyformat=passphrase``) and ``dsgul/raw``
  (``keyformat=raw``), encryption roots holding repositories ``survey`` and ``notes``;
  ``crypt.json``: their keys (hex); ``crypt.live.json``: the live reading, keys loaded.
- ``active.img``: a copy of a pool taken while it was imported (its labels say ACTIVE).
- ``damaged.img``: ``small.img`` with one data block of ``damaged.json``'s file overwritten.
- ``bench.img`` (``--bench``): 3,000 small files and one 512 MiB file, for benchmarks/.

The pools are created under temporary in-core names (``zpool create -t``), so the VM's
own ``dsgtest`` pool is never touched.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testpool.parity import read_everything

from dsg_storage import Repository
from dsg_storage.read.reader import open_live

MiB = 1 << 20
POOL = "dsgul"
#: The file whose block damaged.img breaks (incompressible, compression off).
DAMAGED_FILE = "big/victim.bin"
PASSPHRASE = "correct horse battery staple"


def run(*args: str) -> str:
    done = subprocess.run(list(args), check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)}: exit {done.returncode}\n{done.stdout}{done.stderr}")
    return done.stdout


def copy(source: Path, target: Path) -> None:
    """A sparse copy (the images are mostly holes)."""
    run("cp", "--sparse=always", str(source), str(target))


def new_pool(image: Path, size: int, temp: str, *props: str) -> None:
    with open(image, "wb") as handle:
        handle.truncate(size)
    run("zpool", "create", "-t", temp, "-o", "cachefile=none", "-m", "none", *props, POOL, str(image))


def fill_repository(repo: Repository, work: Path, commits: int) -> None:
    for n in range(commits):
        with repo.begin(mountpoint=str(work / "mnt" / repo.name.rsplit("/", 1)[1]), owner="1000:1000") as tx:
            root = Path(tx.path)
            (root / f"file{n}.txt").write_text(f"commit {n}\n")
            (root / "sub" / "deeper").mkdir(parents=True, exist_ok=True)
            (root / "sub" / "deeper" / "data.bin").write_bytes(os.urandom(3000 + n))
            (root / "empty").write_bytes(b"")
            os.chmod(root / "empty", 0o600)
            with open(root / "sparse.bin", "wb") as handle:
                handle.truncate(5 * MiB)
                handle.seek(3 * MiB)
                handle.write(b"middle" * 100)
            (root / "link").unlink(missing_ok=True)
            os.symlink("sub/deeper/data.bin", root / "link")
            (root / "hard").unlink(missing_ok=True)
            os.link(root / f"file{n}.txt", root / "hard")
            if not (root / "fifo").exists():
                os.mkfifo(root / "fifo")
            os.setxattr(root / f"file{n}.txt", "user.note", f"note {n}".encode())
            os.setxattr(root / "sub" / "deeper" / "data.bin", "user.binary", bytes(range(256)) * 4)
            os.setxattr(root / "sub" / "deeper" / "data.bin", "user.empty", b"")
            os.setxattr(root / "sub", "user.dir", b"on a directory")
            os.chown(root / "empty", 1234, 5678)
            os.utime(root / "empty", ns=(1_600_000_000_123_456_789, 1_600_000_000_987_654_321))
            (root / "big").mkdir(exist_ok=True)
            (root / "big" / "victim.bin").write_bytes(os.urandom(512 * 1024))
            tx.commit(f"commit {n}\nsecond line")


def small(out: Path, work: Path) -> None:
    image = out / "small.img"
    temp = "dsgul-small"
    new_pool(image, 256 * MiB, temp, "-O", "compression=off")
    try:
        # xattrs kept in the files' SA (Linux's usual) under repos/, in hidden directories under dirx/
        run("zfs", "create", "-o", "xattr=sa", f"{temp}/repos")
        run("zfs", "create", "-o", "xattr=dir", f"{temp}/dirx")
        run("zfs", "create", "-o", "mountpoint=none", f"{temp}/plain")
        fill_repository(Repository(f"{temp}/repos/survey", allow=temp), work, 3)
        fill_repository(Repository(f"{temp}/repos/notes", allow=temp), work, 1)
        fill_repository(Repository(f"{temp}/dirx/old", allow=temp), work, 1)
        with open_live() as reader:
            live = read_everything(reader, temp)
            # where damaged.img breaks a block: the victim of the last commit of survey
            # (its object number is the inode of the file the live reader opens)
            with reader.open(f"{temp}/repos/survey", DAMAGED_FILE) as victim:
                obj = os.fstat(victim.fileno()).st_ino
        text = json.dumps(live, sort_keys=True, indent=1)
        text = text.replace(f'"{temp}/', f'"{POOL}/').replace(f'"{temp}@', f'"{POOL}@')
        (out / "small.live.json").write_text(text)
    finally:
        run("zpool", "export", temp)
    dump = run("zdb", "-e", "-p", str(image), "-ddddd", f"{POOL}/repos/survey", str(obj))
    # zdb -ddddd lists a file's blocks as "OFFSET  L0 VDEV:DVA-OFFSET:ASIZE LSIZE/PSIZE ..."
    match = re.search(r"^\s+[0-9a-f]+\s+L0 0:([0-9a-f]+):([0-9a-f]+)\s", dump, re.MULTILINE)
    if not match:
        raise SystemExit(f"no level-0 block found for object {obj}:\n{dump}")
    offset, size = int(match[1], 16), int(match[2], 16)
    copy(image, out / "damaged.img")
    with open(out / "damaged.img", "r+b") as handle:
        handle.seek(4 * MiB + offset)  # past the two front labels and the boot block
        handle.write(b"\xa5" * min(size, 4096))
    (out / "damaged.json").write_text(json.dumps({"repository": f"{POOL}/repos/survey", "path": DAMAGED_FILE}))


def active(out: Path) -> None:
    image = out / "active-src.img"
    temp = "dsgul-active"
    new_pool(image, 128 * MiB, temp)
    try:
        run("zfs", "create", f"{temp}/data")
        run("zpool", "sync", temp)
        copy(image, out / "active.img")
    finally:
        run("zpool", "export", temp)
        image.unlink()


def crypt(out: Path, work: Path) -> None:
    """Encrypted repositories: one under a passphrase, one under a raw key."""
    image = out / "crypt.img"
    temp = "dsgul-crypt"
    keys = {"passphrase": PASSPHRASE.encode(), "raw": os.urandom(32)}
    repos = {"passphrase": "survey", "raw": "notes"}  # mounted at work/mnt/<name>: one each
    new_pool(image, 128 * MiB, temp)
    try:
        for form, key in keys.items():
            keyfile = work / f"key-{form}"
            keyfile.write_bytes(key)
            run("zfs", "create", "-o", "encryption=on", "-o", f"keyformat={form}",
                "-o", f"keylocation=file://{keyfile}", f"{temp}/{form}")  # fmt: skip
            fill_repository(Repository(f"{temp}/{form}/{repos[form]}", allow=temp), work, 2)
        with open_live() as reader:
            live = read_everything(reader, temp)
        text = json.dumps(live, sort_keys=True, indent=1)
        (out / "crypt.live.json").write_text(text.replace(f'"{temp}/', f'"{POOL}/').replace(f'"{temp}@', f'"{POOL}@'))
    finally:
        run("zpool", "export", temp)
    (out / "crypt.json").write_text(json.dumps({form: key.hex() for form, key in keys.items()}))


def bench(out: Path, work: Path) -> None:
    image = out / "bench.img"
    temp = "dsgul-bench"
    new_pool(image, 1024 * MiB, temp, "-O", "compression=off")
    try:
        repo = Repository(f"{temp}/bench", allow=temp)
        with repo.begin(mountpoint=str(work / "mnt" / "bench"), owner="1000:1000") as tx:
            root = Path(tx.path)
            for d in range(30):
                (root / "tree" / f"d{d:02}").mkdir(parents=True)
                for f in range(100):
                    (root / "tree" / f"d{d:02}" / f"f{f:03}.txt").write_bytes(os.urandom(1000 + f))
            with open(root / "large.bin", "wb") as handle:
                handle.writelines(os.urandom(MiB) for _ in range(512))
            tx.commit("bench")
    finally:
        run("zpool", "export", temp)


def main(argv: list[str]) -> int:
    out = Path(argv[0]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(run("mktemp", "-d").strip())
    # The images are made on the guest's own disk, then copied out sparse: only their data
    # crosses the 9p share (ZFS writing through 9p, or reading holes back, crawls).
    local = Path(run("mktemp", "-d", "-p", "/var/tmp").strip())
    small(local, work)
    active(local)
    crypt(local, work)
    if "--bench" in argv[1:]:
        bench(local, work)
    for made in sorted(local.iterdir()):
        copy(made, out / made.name)
    (out / "done").write_text("ok\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
