#!/usr/bin/env python3
"""Where one bundle import spends its time: before ZFS reads the first stream byte,
inside ``lzc_receive``, on the digest thread (if any), and in the fixed steps after the
last byte (property sets, rename, mount, audit log).

    ./testpool/run python3 benchmarks/profile_import.py [--size-mib 512] [--random]

Every call on the ZFS boundary (and its host half) is timed, as are the stream checks
and the audit log's append; the timeline is printed relative to the start of
``import_bundle``, with the plain ``zfs receive < file`` of the same stream beside it.
"""

from __future__ import annotations

import argparse
import functools
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_bundles import data_repository

from dsg_storage.transfer import audit, check, export, importing, reader
from dsg_storage.zfs.boundary import open_zfs

ROOT = "dsgtest/profile-import"
WORK = Path("/var/tmp/dsg-profile-import")
MiB = 1 << 20
EVENTS: list[tuple[str, str, float, float]] = []  # thread, what, start, end


def timed(what: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            EVENTS.append((threading.current_thread().name, what, start, time.perf_counter()))

    return wrapper


def instrument(obj: Any, prefix: str) -> None:
    for name in dir(obj):
        if name.startswith("_") or name in ("steps", "allow", "guard", "host", "lzc"):
            continue
        value = getattr(obj, name)
        if callable(value):
            setattr(obj, name, timed(f"{prefix}.{name}", value))


def main() -> int:  # noqa: PLR0915  a profile script: one timed pass after another, read top to bottom
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--random", action="store_true", help="incompressible data (default: patterned)")
    parser.add_argument("--signed", action="store_true", help="sign the bundle and check the signature on import")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    subprocess.run(["zfs", "create", "-o", "compression=lz4", "-o", f"mountpoint={WORK / 'mnt'}", ROOT], check=True)
    try:
        repo = data_repository(f"{ROOT}/src", WORK / "mnt" / "src", args.size_mib, compressible=not args.random)
        path = WORK / "b.dsgb"
        key, signers = WORK / "key", WORK / "allowed_signers"
        if args.signed:
            key.unlink(missing_ok=True)
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
            kind, blob = Path(f"{key}.pub").read_text().split()[:2]
            signers.write_text(f'bench namespaces="dsg-storage" {kind} {blob}\n')
        export.export_bundle(repo.name, path, sign=key if args.signed else None)
        raw = WORK / "raw.zstream"
        with open(raw, "wb") as handle:
            subprocess.run(["zfs", "send", repo.history()[-1].snapshot], stdout=handle, check=True)
        with open(raw, "rb") as handle:
            start = time.perf_counter()
            subprocess.run(["zfs", "receive", f"{ROOT}/plain"], stdin=handle, check=True)
            plain = time.perf_counter() - start
        raw.unlink()

        zfs = open_zfs(ROOT)
        instrument(zfs, "zfs")
        instrument(zfs.host, "host")
        check.file_sha256 = timed("file_sha256", check.file_sha256)  # the check's own passes
        importing._file_sha256 = check.file_sha256  # type: ignore[attr-defined]  # and the import's
        reader.verify = timed("verify (md5)", reader.verify)
        reader.CheckedRecords.check_stream = timed("check_stream", reader.CheckedRecords.check_stream)  # type: ignore[method-assign]
        audit.AuditLog.append = timed("audit.append", audit.AuditLog.append)  # type: ignore[method-assign]
        importing._check_for_import = timed("check_for_import", importing._check_for_import)  # type: ignore[attr-defined]
        importing.Repository.recover = timed("recover", importing.Repository.recover)  # type: ignore[method-assign]
        start = time.perf_counter()
        importing.import_bundle(
            path,
            f"{ROOT}/ours",
            mountpoint=str(WORK / "ours"),
            zfs=zfs,
            allowed_signers=signers if args.signed else None,
        )
        total = time.perf_counter() - start
        size = path.stat().st_size / MiB
        print(
            f"{size:,.0f} MiB bundle ({'random' if args.random else 'patterned'}{', signed' if args.signed else ''}): "
            f"zfs receive < file {plain:.2f} s, import {total:.2f} s, ratio {plain / total:.2f}"
        )
        for thread, what, began, ended in sorted(EVENTS, key=lambda e: e[2]):
            if ended - began >= 0.005 or what.endswith("receive_from"):
                print(f"  {began - start:7.3f} {ended - start:7.3f} {ended - began:7.3f}  {what:28} {thread}")
        receive = sum(e[3] - e[2] for e in EVENTS if e[1] == "zfs.receive_from")
        first = min(e[2] for e in EVENTS if e[1] == "zfs.receive_from") - start
        last = max(e[3] for e in EVENTS if e[1] == "zfs.receive_from")
        print(
            f"  before the first byte {first:.3f} s, receiving {receive:.3f} s, after the last {start + total - last:.3f} s"
        )
        checks = sum(e[3] - e[2] for e in EVENTS if e[1] == "check_stream")
        print(f"  stream checks (digest thread) {checks:.3f} s")
    finally:
        subprocess.run(["zfs", "destroy", "-r", ROOT], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
