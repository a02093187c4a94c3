"""The command line as a process of its own, for the real-pool tests that run it so:
``dsg(*args, allow=..., json=..., env=...)`` runs ``python -m dsg_storage [--json]
[--allow ALLOW] ARGS`` and returns what it did (never raising on its exit status);
``dsg_json`` also asserts it succeeded and returns its JSON. ``with_src`` is an
environment that runs this checkout's code (``PYTHONPATH=src``).

What a command prints and returns is tested in-process (tests/unit/test_cli_*.py); here
the process is the point: one process begins what another commits, the real pool, sudo,
the queue across processes."""

from __future__ import annotations

import json as json_
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SRC = str(Path(__file__).resolve().parents[2] / "src")


def with_src(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's environment) with this checkout's ``src`` as ``PYTHONPATH``."""
    return {**(os.environ if env is None else env), "PYTHONPATH": SRC}


def dsg(
    *args: str,
    allow: str | None = None,
    json: bool = True,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """``python -m dsg_storage`` with ``--json`` (unless ``json=False``), ``--allow ALLOW``
    when given, then ``args``; in ``env`` (default: this process's environment)."""
    command = [
        sys.executable,
        "-m",
        "dsg_storage",
        *(["--json"] if json else []),
        *(["--allow", allow] if allow is not None else []),
    ]
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        env=None if env is None else dict(env),
        check=False,
        timeout=timeout,
    )


def dsg_json(*args: str, allow: str | None = None, env: Mapping[str, str] | None = None) -> Any:
    """``dsg(...)``, which must succeed: its JSON output."""
    done = dsg(*args, allow=allow, env=env)
    assert done.returncode == 0, done.stderr
    return json_.loads(done.stdout)
