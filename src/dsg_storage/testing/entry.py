"""The ``pytest11`` entry point: only the switch that turns the plugin on.

Installing dsg-storage must not change anybody's test run, so the fixtures of
``dsg_storage.testing`` load only when asked for: ``-p dsg_storage.testing``,
``--dsg-storage-zfs``, or ``dsg_storage_zfs = true`` in the pytest configuration.
"""

from __future__ import annotations

import pytest

PLUGIN = "dsg_storage.testing"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--dsg-storage-zfs", action="store_true", help="load dsg_storage.testing (real-ZFS fixtures, dsgtest pool)"
    )
    parser.addini("dsg_storage_zfs", type="bool", default=False, help="load dsg_storage.testing")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--dsg-storage-zfs") or config.getini("dsg_storage_zfs"):
        config.pluginmanager.import_plugin(PLUGIN)
