"""Metrics in the Prometheus text format, parsed back with prometheus_client's parser."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dsg_storage.metrics import Facts, OpenTransaction, RepositoryFacts, render, write_textfile


def facts() -> Facts:
    return Facts(
        queue_counts={"pending": 3, "done": 7, "dead": 1},
        queue_max_pending=100,
        oldest_pending_age=42.5,
        readable={"tank/data": True, "gone/pool": False},
        repositories=(RepositoryFacts("tank/data/a", 12, 1_800_000_000.0), RepositoryFacts("tank/data/b", 0, None)),
        transactions=(OpenTransaction("tank/data/a", "20261121T071530Z-3fa2c1", "open", 3600.0),),
    )


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_render_carries_every_value() -> None:
    got = samples(render(facts()))
    assert got[("dsg_storage_queue_items", (("state", "pending"),))] == 3
    assert got[("dsg_storage_queue_items", (("state", "dead"),))] == 1
    assert got[("dsg_storage_queue_max_pending", ())] == 100
    assert got[("dsg_storage_queue_oldest_pending_age_seconds", ())] == 42.5
    assert got[("dsg_storage_up", (("under", "gone/pool"),))] == 0
    assert got[("dsg_storage_commits", (("repository", "tank/data/a"),))] == 12
    assert got[("dsg_storage_last_commit_timestamp_seconds", (("repository", "tank/data/a"),))] == 1.8e9
    assert ("dsg_storage_last_commit_timestamp_seconds", (("repository", "tank/data/b"),)) not in got
    assert got[("dsg_storage_open_transactions", (("repository", "tank/data/a"),))] == 1
    assert got[("dsg_storage_open_transactions", (("repository", "tank/data/b"),))] == 0
    key = (("repository", "tank/data/a"), ("state", "open"), ("tx", "20261121T071530Z-3fa2c1"))
    assert got[("dsg_storage_transaction_age_seconds", key)] == 3600


def test_textfile_is_written_whole_under_its_name(tmp_path: Path) -> None:
    path = write_textfile(facts(), tmp_path)
    assert path == str(tmp_path / "dsg_storage.prom") and os.listdir(tmp_path) == ["dsg_storage.prom"]
    assert samples(Path(path).read_text()) == samples(render(facts()))


def test_a_missing_textfile_directory_is_a_clear_error(tmp_path: Path) -> None:
    from dsg_storage import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="not a directory"):
        write_textfile(facts(), tmp_path / "missing")


def test_without_prometheus_client_metrics_say_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from dsg_storage import MetricsUnavailableError

    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # makes the import fail
    with pytest.raises(MetricsUnavailableError, match="prometheus_client") as caught:
        render(facts())
    assert "dsg-storage[metrics]" in str(caught.value) and "python3-prometheus-client" in str(caught.value)
