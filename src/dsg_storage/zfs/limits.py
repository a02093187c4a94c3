"""What a channel program may use: its instruction and memory limits.

pyzfs passes its defaults (10 million instructions, 10 MiB) unless told otherwise; the
kernel allows up to ``zfs_lua_max_instrlimit``/``zfs_lua_max_memlimit`` (100 million,
100 MiB by default). A read-only program gets the largest (it may list a long history);
a changing one what its size needs (it holds a transaction group while it runs).
Measured in the VM: 0002, "10,000 commits, and the limits of a channel program".
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

#: Where Linux shows the largest limits the kernel lets a channel program be given
#: (zfs(4): ``zfs_lua_max_instrlimit``, ``zfs_lua_max_memlimit``).
MODULE_PARAMETERS = "/sys/module/zfs/parameters"


def largest_limits(parameters: str | os.PathLike[str] = MODULE_PARAMETERS) -> dict[str, int]:
    """``instrlimit``/``memlimit`` for pyzfs's ``lzc_channel_program[_nosync]``: the largest
    this kernel allows (by default 100 million instructions, 100 MiB). The read-only
    programs run with them: a list of snapshots with our properties takes ~1 KiB each, so
    pyzfs's defaults (10 million, 10 MiB) end a history at ~10,000 commits. A limit that
    cannot be read (not Linux, no module, not a positive number) is left out: pyzfs's
    default then."""
    found = {}
    for key, name in (("instrlimit", "zfs_lua_max_instrlimit"), ("memlimit", "zfs_lua_max_memlimit")):
        try:
            with open(os.path.join(parameters, name), encoding="ascii", errors="replace") as handle:
                text = handle.read(64).strip()
        except OSError:
            continue
        if text.isdigit() and int(text) > 0:
            found[key] = int(text)
    return found


#: pyzfs's defaults (``ZCP_DEFAULT_INSTRLIMIT``/``MEMLIMIT``): what a change is given
#: at least.
DEFAULT_LIMITS = {"instrlimit": 10_000_000, "memlimit": 10 << 20}


def batch_limits(ops: Sequence[str], changes: int, largest: Mapping[str, int]) -> dict[str, int]:
    """The limits for ``BATCH`` run with ``ops`` (``changes`` of them): what its size needs,
    at least pyzfs's defaults, at most ``largest`` (``largest_limits``). Measured in the
    VM: 900 property changes (300 snapshots, 95,700 bytes of arguments) needed 352 KiB
    and under 100,000 instructions, so a bundle of ~8,700 commits outgrew the default
    10 MiB. Given here: ~3x the memory its arguments take as Lua strings, and 1,000
    instructions a change (~10x)."""
    memory = 64 * 1024 + 4 * sum(len(op) + 48 for op in ops)
    wanted = {"instrlimit": 1000 * changes, "memlimit": memory}
    return {key: min(max(wanted[key], default), largest.get(key, default)) for key, default in DEFAULT_LIMITS.items()}
