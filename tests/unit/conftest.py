"""``cli``: the command line run in-process (``commands.main``) against the in-memory pool
(``tests/fakes.py``), with its own environment: step locks, queue and allow-list in the
test's directory. What each command prints, its exit status and what the fake pool holds
afterwards are the outcomes the tests assert."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from dsg_storage.cli.commands import main
from dsg_storage.zfs.allow import AllowList
from dsg_storage.zfs.host import Guard

from ..fakes import FakeZfs


@attrs.frozen
class Ran:
    status: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)


class InProcess:
    """``cli("begin", REPO, ...)`` runs ``dsg-storage --json begin REPO ...``; ``text=True``
    without ``--json``. ``pool`` is the fake pool every boundary the command opens shows
    (through the allow-list it is opened with); ``env`` the environment it reads."""

    def __init__(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.tmp = tmp_path
        self.capsys = capsys
        self.pool = FakeZfs()
        self.pool.datasets["tank"] = {"mountpoint": "none"}
        self.pool.datasets["tank/data"] = {"mountpoint": "none"}
        self.opened: list[AllowList] = []
        self.env = {
            "DSG_STORAGE_LOCK_DIR": str(tmp_path / "locks"),
            "DSG_STORAGE_QUEUE": str(tmp_path / "queue" / "queue.sqlite"),
            "DSG_STORAGE_ALLOW": "tank/data",
            "PATH": "/usr/bin:/bin",
        }

    def boundary(self, allow: AllowList) -> FakeZfs:
        """What ``open_zfs(allow)`` gives: the pool, its changes confined to ``allow``."""
        self.opened.append(allow)
        self.pool.guard = Guard(allow)
        return self.pool

    def __call__(self, *argv: str, text: bool = False) -> Ran:
        self.capsys.readouterr()
        status = main([*([] if text else ["--json"]), *argv], zfs=self.boundary, environ=dict(self.env))
        out, err = self.capsys.readouterr()
        return Ran(status, out, err)

    def ok(self, *argv: str, text: bool = False) -> Any:
        """Run; it must succeed: its JSON (or, with ``text``, its output)."""
        ran = self(*argv, text=text)
        assert ran.status == 0, ran.err
        return ran.out if text else ran.json

    def repository(self, name: str = "tank/data/a") -> str:
        """An initialised repository (one commit), mounted at a real directory of the test's."""
        mountpoint = self.tmp / "srv" / name.rsplit("/", 1)[1]
        mountpoint.mkdir(parents=True, exist_ok=True)
        begun = self.ok("begin", name, "--mountpoint", str(mountpoint), "--owner", "1000:1000", "--mode", "0750")
        self.ok("commit", name, begun["tx"], "-m", "first")
        return name


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[InProcess]:
    yield InProcess(tmp_path, capsys)
