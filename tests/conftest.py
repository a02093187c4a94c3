"""Shared test configuration. Real-ZFS tests live in tests/zfs/ (marked ``zfs``)."""

from __future__ import annotations

import os

import pytest

# Our own real-ZFS fixtures come from the plugin other projects use (eat our own cooking).
pytest_plugins = ["dsg_storage.testing"]
# Another project's tests (its own pyproject.toml); tests/zfs/test_plugin.py runs them.
collect_ignore = ["sample_project"]
# Host tests read pool images without ZFS; .ci/run runs them on the host, not in the VM.
if os.environ.get("DSG_TESTPOOL_IN_VM"):
    collect_ignore.append("host")

REPORTED = ("crash_points", "random_kills")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--random-kills",
        type=int,
        default=25,
        help="SIGKILLs at random moments per random-kill crash test (default 25, each run a new seed; "
        "the sweeps kill at every step whatever this says): more for a deeper run, e.g. 200",
    )
    parser.addoption(
        "--race-rounds",
        type=int,
        default=20,
        help="rounds of each race of two processes to begin (default 20; each round is a fresh race "
        "whose loser must be refused): more for a deeper run, e.g. 200",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that take the pool for themselves (``dsgtest_exclusive``: they export and
    import it) run first. A test that waits for them stalls its worker; xdist hands each
    worker a run of consecutive tests to start with, so while the first runs these the
    other runs unit tests, which never wait for the pool (in collection order they came
    among the ZFS tests and the other worker sat idle through each, ~250 s a run)."""
    items.sort(key=lambda item: "dsgtest_exclusive" not in getattr(item, "fixturenames", ()))


@pytest.fixture
def random_kills(request: pytest.FixtureRequest) -> int:
    """How many random kills a random-kill crash test makes (``--random-kills``)."""
    count = int(request.config.getoption("--random-kills"))
    if count < 1:
        raise pytest.UsageError("--random-kills takes a count of at least 1")
    return count


@pytest.fixture
def race_rounds(request: pytest.FixtureRequest) -> int:
    """How many rounds a race-to-begin test runs (``--race-rounds``)."""
    count = int(request.config.getoption("--race-rounds"))
    if count < 1:
        raise pytest.UsageError("--race-rounds takes a count of at least 1")
    return count


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the crash-safety counts the tests recorded (record_property)."""
    lines = []
    for outcome in ("passed", "failed"):
        for report in terminalreporter.stats.get(outcome, []):
            for key, value in getattr(report, "user_properties", []):
                if key in REPORTED and report.when == "call":
                    lines.append(f"{key}: {value} ({outcome})")
    if lines:
        terminalreporter.section("crash safety")
        for line in sorted(lines):
            terminalreporter.write_line(line)
