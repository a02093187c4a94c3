"""The error hierarchy: each error is also the builtin it means."""

from __future__ import annotations

import errno

import pytest

import dsg_storage as ds


@pytest.mark.parametrize(
    ("cls", "builtin", "code"),
    [
        (ds.DatasetNotFoundError, FileNotFoundError, errno.ENOENT),
        (ds.DatasetExistsError, FileExistsError, errno.EEXIST),
        (ds.NotAllowedError, PermissionError, errno.EPERM),
        (ds.DatasetBusyError, OSError, errno.EBUSY),
        (ds.NoSpaceError, OSError, errno.ENOSPC),
        (ds.RepositoryNotFoundError, FileNotFoundError, errno.ENOENT),
    ],
)
def test_os_errors_carry_their_errno(cls: type[ds.DsgStorageError], builtin: type, code: int) -> None:
    err = cls("tank/a: gone", dataset="tank/a", hint="do this")
    assert isinstance(err, builtin) and isinstance(err, ds.DsgStorageError)
    assert err.errno == code  # type: ignore[attr-defined]
    assert str(err) == "tank/a: gone; do this" and err.dataset == "tank/a"


def test_value_errors() -> None:
    assert issubclass(ds.InvalidNameError, ValueError) and issubclass(ds.InvalidArgumentError, ValueError)
    assert issubclass(ds.TransactionNotFoundError, LookupError)
    assert issubclass(ds.ZfsUnavailableError, RuntimeError)
