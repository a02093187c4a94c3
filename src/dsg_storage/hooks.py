"""Work that resumes by itself: the ZED zedlet and the systemd units that run the queue.

* ``pool_import-dsg-storage.sh``: a zedlet for the ZFS Event Daemon (ZED runs every
  executable ``pool_import-*.sh`` in its zedlet directory, default ``/etc/zfs/zed.d``,
  when a pool is imported, with the pool's name in ``$ZEVENT_POOL``). It recovers every
  allowed repository of that pool (``recover --pool POOL``: after a reboot, puts back what
  ZFS does not mount by itself, such as an open transaction's workspace), then runs
  every pending queue item of the pool at once (``queue flush --pool POOL``).
* ``dsg-storage-queue.service`` (oneshot: ``gc``, the items that are due) and
  ``dsg-storage-queue.timer`` (every 5 minutes, from 2 minutes after boot): the portable
  alternative where ZED does not run, and the retry for items whose backoff is not over.

ZED and systemd start their programs with an almost empty environment, so the files
carry what the installing environment says: the command (an absolute path), the
allow-list and the ``DSG_STORAGE_*`` settings (queue, lock directory, queue bound), and
``PYTHONPATH`` when it is set. ``render`` decides the files' contents; ``install`` writes
them, each atomically (a temporary file renamed into place), so ZED or systemd never
reads half a file.

Root runs these files, at every pool import and every 5 minutes, long after they were
written, so ``install`` first checks that only root can change what they run or import
from (``HookFile.runs_from``: the command's paths, a script's interpreter, each
``PYTHONPATH`` entry; ``check_runs_from``): every directory from ``/`` root's and
writable by nobody else, reached without a symbolic link (``hostfs.check_root_only``).
A refusal writes nothing. After a crash an installed file is old or new, never half of
one; at most a ``.NAME.*`` temporary file is left beside it.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs

from . import hostfs
from ._version import __version__
from .errors import InvalidArgumentError, UnsafePathError
from .settings import CARRIED

ZEDLET = "pool_import-dsg-storage.sh"
SERVICE = "dsg-storage-queue.service"
TIMER = "dsg-storage-queue.timer"
#: The settings carried into the hooks' environment, when set where they are installed
#: (``Settings.carried`` holds them as read).
CARRIED_ENV = CARRIED
# What may appear in a value baked into a unit or a script: no quoting surprises.
_SAFE = re.compile(r"[A-Za-z0-9_@+=:,./-]*")


#: How many ``#!`` interpreters deep ``check_runs_from`` follows (the kernel: 4).
MAX_INTERPRETERS = 4


@attrs.frozen
class HookFile:
    name: str
    kind: str  # "zedlet" or "systemd"
    mode: int
    content: str
    #: What root runs or imports code from when it runs this file: absolute words of the
    #: command and the ``PYTHONPATH`` entries. ``install`` checks them (``check_runs_from``).
    runs_from: tuple[str, ...] = ()


def default_command() -> list[str]:
    """``dsg-storage`` as found on PATH, else this interpreter running the package."""
    # abspath, not realpath: a venv's python is a symlink whose target lacks the venv.
    found = shutil.which("dsg-storage")
    return [os.path.abspath(found)] if found else [os.path.abspath(sys.executable), "-m", "dsg_storage"]


def carried_env(environ: Mapping[str, str], allow: str | None = None) -> dict[str, str]:
    """The part of ``environ`` the hooks carry (``allow`` replaces the allow-list)."""
    env = {key: environ[key] for key in CARRIED_ENV if environ.get(key)}
    if allow:
        env["DSG_STORAGE_ALLOW"] = allow
    return env


def _check(what: str, value: str) -> str:
    if not _SAFE.fullmatch(value):
        raise InvalidArgumentError(
            f"{what} {value!r} cannot go into a zedlet or unit file: use letters, digits and _@+=:,./- only"
        )
    return value


def render(command: Sequence[str], env: Mapping[str, str]) -> list[HookFile]:
    """The zedlet and the units for ``command`` (argv of dsg-storage; first item an
    absolute path) with ``env`` (see ``carried_env``)."""
    if not command or not os.path.isabs(command[0]):
        raise InvalidArgumentError(f"the hooks' command must start with an absolute path, not {list(command)!r}")
    for word in command:
        _check("command word", word)
    for key, value in env.items():
        _check(f"${key}", key)
        _check(f"${key}", value)
    if not env.get("DSG_STORAGE_ALLOW"):
        raise InvalidArgumentError(
            "the hooks need an allow-list to change anything: pass --allow POOL[/PREFIX] or set $DSG_STORAGE_ALLOW"
        )
    header = f"Installed by 'dsg-storage install-hooks' (dsg-storage {__version__})."
    argv = " ".join(shlex.quote(w) for w in command)
    exports = "".join(f"export {key}={shlex.quote(value)}\n" for key, value in sorted(env.items()))
    zedlet = (
        "#!/bin/sh\n"
        f"# {header}\n"
        "# ZED runs this when a pool is imported: recover dsg-storage's repositories on that\n"
        "# pool, then apply its queued work now. Both run; the first failure is the exit status.\n"
        '[ -n "${ZEVENT_POOL}" ] || exit 0\n'
        f"{exports}"
        f'{argv} recover --pool "${{ZEVENT_POOL}}"\n'
        "recovered=$?\n"
        f'{argv} queue flush --pool "${{ZEVENT_POOL}}" || exit\n'
        'exit "${recovered}"\n'
    )
    environment = "".join(f'Environment="{key}={value}"\n' for key, value in sorted(env.items()))
    service = (
        f"# {header}\n"
        "[Unit]\n"
        "Description=dsg-storage: run queued work that is due\n"
        "After=zfs-import.target zfs-mount.service\n"
        "\n"
        "[Service]\n"
        "Type=oneshot\n"
        f"{environment}"
        f"ExecStart={' '.join(command)} gc\n"
    )
    timer = (
        f"# {header}\n"
        "[Unit]\n"
        "Description=dsg-storage: run queued work every 5 minutes\n"
        "\n"
        "[Timer]\n"
        "OnBootSec=2min\n"
        "OnUnitActiveSec=5min\n"
        f"Unit={SERVICE}\n"
        "\n"
        "[Install]\n"
        "WantedBy=timers.target\n"
    )
    pythonpath = env.get("PYTHONPATH")
    runs_from = (*(word for word in command if word.startswith("/")), *(pythonpath.split(":") if pythonpath else ()))
    return [
        HookFile(ZEDLET, "zedlet", 0o755, zedlet, runs_from),
        HookFile(SERVICE, "systemd", 0o644, service, runs_from),
        HookFile(TIMER, "systemd", 0o644, timer),
    ]


def check_runs_from(path: str) -> None:
    """Refuse (UnsafePathError) ``path`` as something root runs or imports code from later,
    unless only root can change it (``hostfs.check_root_only``: it and every directory
    above it root's, writable by nobody else, no symbolic link but a last one, followed);
    a script's ``#!`` interpreter is checked the same way. A missing path is refused too:
    whoever could create it later would choose what root runs."""
    current, seen = path, 0
    while True:
        if not current.startswith("/"):
            origin = "" if current == path else f" (the #! interpreter of {path})"
            raise UnsafePathError(
                f"{current!r}{origin} is not an absolute path, and the hooks would look it up from ZED's or "
                "systemd's working directory; nothing was installed"
            )
        try:
            resolved, st = hostfs.check_root_only(current)
        except FileNotFoundError:
            raise UnsafePathError(
                f"{current} does not exist: whoever creates it later would choose what root runs at every "
                "pool import; nothing was installed",
                hint="remove it from PYTHONPATH or --command",
            ) from None
        except UnsafePathError as exc:
            raise UnsafePathError(
                f"{current} cannot go into hooks root runs at every pool import: {exc.message}; nothing was installed",
                hint=exc.hint or "name a path only root can change, with no symbolic link on the way",
            ) from None
        if not stat.S_ISREG(st.st_mode):
            return
        with open(resolved, "rb") as handle:  # nobody but root can change it: checked above
            first = handle.readline(256)
        if not first.startswith(b"#!"):
            return
        words = first[2:].split()
        if not words:
            return
        seen += 1
        if seen > MAX_INTERPRETERS:
            raise UnsafePathError(f"{path} has more than {MAX_INTERPRETERS} nested #! interpreters")
        current = os.fsdecode(words[0])


def install(files: Sequence[HookFile], *, zedlet_dir: str | None, systemd_dir: str | None) -> list[str]:
    """Write each file into its directory (zedlets to ``zedlet_dir``, units to
    ``systemd_dir``; None skips that kind), atomically; return the paths written.
    First every file's ``runs_from`` is checked (``check_runs_from``): a refusal
    (UnsafePathError) writes nothing."""
    for path in dict.fromkeys(p for hook in files for p in hook.runs_from):
        check_runs_from(path)
    written = []
    for hook in files:
        directory = zedlet_dir if hook.kind == "zedlet" else systemd_dir
        if directory is None:
            continue
        target = Path(directory) / hook.name
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{hook.name}.")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(hook.content)
                handle.flush()
                os.fchmod(handle.fileno(), hook.mode)
                os.fsync(handle.fileno())
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        written.append(str(target))
    return written
