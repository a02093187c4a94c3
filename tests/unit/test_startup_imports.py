"""The fast paths stay fast: ``import dsg_storage`` and ``dsg-storage --version`` load
neither the ZFS bindings nor the core, the bundle code or prometheus_client (nor, for
``--version``, argparse or typing); ``queue stats`` and ``queue list`` need no ZFS and
no attrs either, and ``status`` none of the transaction machinery; none of them imports logging while it logs nothing (benchmarks/bench_cli.py
times them)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import dsg_storage

SRC = str(Path(dsg_storage.__file__).resolve().parents[1])
HEAVY = (
    "libzfs_core",
    "prometheus_client",
    "tenacity",
    "dsg_storage.core.repository",
    "dsg_storage.core.patterns",
    "dsg_storage.core.recovery",
    "dsg_storage.zfs.boundary",
    "dsg_storage.zfs.host",
    "dsg_storage.read.reader",
)


def loaded_after(code: str, tmp_path: Path) -> set[str]:
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    env = {"PYTHONPATH": SRC, "DSG_STORAGE_QUEUE": str(tmp_path / "queue" / "queue.sqlite"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    return set(json.loads(done.stdout.splitlines()[-1]))


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m in HEAVY or m.startswith("dsg_storage.transfer"))


def test_importing_the_package_loads_nothing_heavy(tmp_path: Path) -> None:
    modules = loaded_after("import dsg_storage", tmp_path)
    assert heavy(modules) == []
    assert "attrs" not in modules


def test_version_loads_nothing_heavy(tmp_path: Path) -> None:
    code = (
        "from dsg_storage.cli import main\n"
        "try:\n    main(['--version'])\n"
        "except SystemExit as exc:\n    assert exc.code == 0, exc.code"
    )
    modules = loaded_after(code, tmp_path)
    assert heavy(modules) == []
    assert {
        "argparse",
        "logging",
        "typing",
        "attrs",
        "dsg_storage.errors",
        "dsg_storage.cli.commands",
    } & modules == set()


@pytest.mark.parametrize("action", ["stats", "list"])
def test_queue_stats_and_list_load_no_zfs_code(tmp_path: Path, action: str) -> None:
    modules = loaded_after(f"from dsg_storage.cli import main\nassert main(['queue', '{action}']) == 0", tmp_path)
    assert heavy(modules) == []
    assert {
        "attrs",
        "typing",
        "logging",
        "dsg_storage.cli.sudo",
        "dsg_storage.policy",
    } & modules == set()


def test_status_loads_no_transaction_code(tmp_path: Path) -> None:
    # Exit 0 where ZFS is (the repository does not exist), 1 where the bindings are missing:
    # either way after the imports a status call makes.
    code = "from dsg_storage.cli import main\nassert main(['status', 'dsgtest/no-such-repo']) in (0, 1)"
    modules = loaded_after(code, tmp_path)
    assert "dsg_storage.core.status" in modules
    assert {
        "dsg_storage.core.repository",
        "dsg_storage.core.patterns",
        "dsg_storage.core.recovery",
        "dsg_storage.core.actions",
        "dsg_storage.queue",
        "tenacity",
        "sqlite3",
        "logging",
    } & modules == set()


def test_history_loads_no_transaction_code(tmp_path: Path) -> None:
    code = "from dsg_storage.cli import main\nassert main(['history', 'dsgtest/no-such-repo']) in (1, 4)"
    modules = loaded_after(code, tmp_path)
    assert "dsg_storage.read.reader" in modules
    assert {
        "dsg_storage.core.repository",
        "dsg_storage.core.patterns",
        "dsg_storage.core.recovery",
        "dsg_storage.queue",
        "dsg_storage.zfs.zpool",
        "sqlite3",
        "logging",
        "tempfile",  # only a read of files mounts
    } & modules == set()


def test_every_exported_name_still_imports() -> None:
    exported = {name: getattr(dsg_storage, name) for name in dsg_storage.__all__}
    assert exported["Repository"].__module__ == "dsg_storage.core.repository"
    assert exported["compare_lock"] is dsg_storage.transfer.lockfile.compare
    assert set(dsg_storage.__all__) <= set(dir(dsg_storage))
    namespace: dict[str, object] = {}
    exec("from dsg_storage import *", namespace)  # noqa: S102 (a star import of the lazy names, literally)
    assert set(dsg_storage.__all__) <= set(namespace)
