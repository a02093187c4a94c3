#!/usr/bin/env python3
"""Check that a pool reads the same live and offline.

    testpool/parity.py FILE [FILE...]

The exported pool on FILE(s) is imported normally (nothing mounted, no cache file, under
a temporary name if its name is taken) and read live through dsg-storage's read API
(every repository, its history, the files of its head and of every commit, with
checksums of their contents); then exported and read again through ``open_offline``.
The two readings, as normalized JSON (pool name as on disk, the access field dropped),
must be identical. Exit 0 when they are, 1 with a diff when not. The pool is left
exported, as it was found.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dsg_storage.read.offline import open_offline
from dsg_storage.read.reader import Reader, commit_to_json, entry_to_json, open_live
from dsg_storage.zfs import zpool as _zpool


def read_everything(reader: Reader, under: str) -> dict[str, Any]:
    """Every read the API offers, for every repository at or below ``under``."""
    out: dict[str, Any] = {"repositories": [], "histories": {}, "files": {}}
    for repo in reader.repositories(under):
        out["repositories"].append({k: v for k, v in sorted(vars_of(repo).items())})
        commits = reader.history(repo.name)
        out["histories"][repo.name] = [commit_to_json(c) for c in commits]
        for commit in [None, *(c.name for c in commits)]:
            listing = []
            for entry in reader.files(repo.name, commit=commit):
                record = entry_to_json(entry)
                if entry.type == "file":
                    record["sha256"] = hashlib.sha256(reader.read(repo.name, entry.path, commit=commit)).hexdigest()
                listing.append(record)
            out["files"][f"{repo.name}@{commit or 'HEAD'}"] = listing
    return out


def vars_of(record: Any) -> dict[str, Any]:
    return dict(attrs.asdict(record))


def normalize(reading: dict[str, Any], incore: str, on_disk: str) -> str:
    text = json.dumps(reading, sort_keys=True, indent=1)
    return text.replace(f'"{incore}/', f'"{on_disk}/').replace(f'"{incore}@', f'"{on_disk}@')


def main(files: list[str]) -> int:
    found = _zpool.find_pools(files)
    if len(found) != 1:
        print(f"parity: expected one exported pool on {files}, found {len(found)}", file=sys.stderr)
        return 2
    pool = found[0]
    incore = pool.name if pool.name not in _zpool.imported_pools() else f"{pool.name}-parity-{secrets.token_hex(3)}"
    args = ["zpool", "import", "-N", "-o", "cachefile=none", *(a for f in files for a in ("-d", f))]
    args += [str(pool.guid)] if incore == pool.name else ["-t", str(pool.guid), incore]
    subprocess.run(args, check=True)
    try:
        with open_live() as reader:
            live = normalize(read_everything(reader, incore), incore, pool.name)
    finally:
        subprocess.run(["zpool", "export", incore], check=True)
    with open_offline(files) as reader:
        offline = normalize(read_everything(reader, pool.name), pool.name, pool.name)
    if live == offline:
        reading = json.loads(live)
        files_read = sum(len(v) for v in reading["files"].values())
        print(
            f"parity: identical: {len(reading['repositories'])} repositories, "
            f"{sum(len(h) for h in reading['histories'].values())} commits, {files_read} file entries"
        )
        return 0
    sys.stdout.writelines(difflib.unified_diff(live.splitlines(True), offline.splitlines(True), "live", "offline"))
    return 1


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1:]))
