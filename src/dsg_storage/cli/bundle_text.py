"""A bundle as the command line shows it to a person: what a bundle holds, how it is
signed, and a progress bar for its long passes. Every value from the file is ``shown``."""

from __future__ import annotations

import sys
import time
from typing import Any

from ..present import shown
from ..transfer import metadata as _metadata
from ..transfer.layout import BundleInfo
from ..transfer.progress import ProgressFn
from ..transfer.signing import Signature


def write_progress(stream: Any = None, *, label: str = "") -> ProgressFn | None:
    """A progress bar on a terminal (stderr), None (quiet) otherwise."""
    stream = stream or sys.stderr
    if not stream.isatty():
        return None
    last = [0.0]

    def report(done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - last[0] < 0.2 and done != total:
            return
        last[0] = now
        mib = done / (1 << 20)
        if total:
            stream.write(f"\r{label} {100 * done / total:5.1f}%  {mib:,.1f} / {total / (1 << 20):,.1f} MiB")
        else:
            stream.write(f"\r{label} {mib:,.1f} MiB")
        if done == total:
            stream.write("\n")
        stream.flush()

    return report


def describe(info: BundleInfo, signature: Signature | None = None) -> list[str]:
    """Human lines for ``bundle inspect`` (of a bundle whose claims were checked). Every
    value from the file is ``shown``: control characters in it appear escaped, and a
    newline in a value never starts a line of its own."""
    meta = _metadata.parse(info.metadata, "the bundle")
    base = f"{shown(meta.base.name)} (guid {meta.base.guid})" if meta.base else "-"
    owner, mode = shown(meta.owner or "-"), shown(meta.mode or "-")
    created, tool, zfs = shown(meta.created), shown(meta.dsg_storage_version), shown(meta.zfs_version)
    lines = [
        f"bundle:      format {info.format_version}, {shown(meta.type)}, {info.file_size:,} bytes",
        f"repository:  {shown(meta.repository)}",
        f"recorded:    owner {owner}, mode {mode} (shown only: an import applies its own)",
        f"base:        {base}",
        f"created:     {created} by dsg-storage {tool}, ZFS {zfs}",
        f"snapshots:   {len(meta.snapshots)}",
    ]
    if signature is not None:
        lines.append(f"signature:   {describe_signature(signature)}")
    for snap, part in zip(meta.snapshots, info.parts, strict=True):
        lines.append(f"  {shown(snap.name)}\tguid {snap.guid}\t{part.size:,} bytes\tdigest {shown(part.digest)}")
    return lines


def describe_signature(signature: Signature) -> str:
    """One line saying how the file is signed; the signer's name and key ``shown``."""
    if signature.status == "good":
        return f"good, by {shown(signature.signer or '-')} ({shown(signature.key or 'key')})"
    if signature.status == "unchecked":
        return "present, not checked (no --allowed-signers)"
    return "none"
