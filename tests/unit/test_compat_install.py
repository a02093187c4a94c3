"""``dsg_storage.compat.dsg.install()``: one call switches every place dsg imports its class.

dsg itself is not installed in the test environment, so a stand-in package laid out as
dsg's (``dsg.storage.snapshots`` defines the class, ``dsg.storage`` re-exports it, one
module imports it before the switch and one after) stands for it."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dsg_storage.compat import dsg as compat

LAYOUT = {
    "dsg/__init__.py": "",
    "dsg/storage/__init__.py": "from .snapshots import ZFSOperations\n",
    "dsg/storage/snapshots.py": "class ZFSOperations:\n    origin = 'dsg'\n",
    "dsg/core/early.py": "from dsg.storage.snapshots import ZFSOperations\nOps = ZFSOperations\n",
    "dsg/core/late.py": "from dsg.storage.snapshots import ZFSOperations\n",
    "dsg/core/__init__.py": "",
}


@pytest.fixture
def standin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for rel, text in LAYOUT.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in [n for n in sys.modules if n == "dsg" or n.startswith("dsg.")]:
        del sys.modules[name]


def test_install_switches_every_import_of_dsgs_class_and_puts_it_back(standin: None) -> None:
    early = importlib.import_module("dsg.core.early")
    dsgs = early.ZFSOperations
    undo = compat.install()
    late = importlib.import_module("dsg.core.late")
    storage = importlib.import_module("dsg.storage")
    snapshots = importlib.import_module("dsg.storage.snapshots")
    for module, name in ((early, "ZFSOperations"), (early, "Ops"), (late, "ZFSOperations"), (storage, "ZFSOperations")):
        assert getattr(module, name) is compat.ZFSOperations, (module.__name__, name)
    assert snapshots.ZFSOperations is compat.ZFSOperations
    assert compat.install()() is None  # a second install changes nothing
    undo()
    assert early.ZFSOperations is dsgs and storage.ZFSOperations is dsgs and snapshots.ZFSOperations is dsgs


def test_install_without_dsg_says_so() -> None:
    with pytest.raises(ImportError):
        compat.install("dsg_not_installed_here.storage.snapshots")
