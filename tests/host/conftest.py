"""Host tests: pool images made by real ZFS in the VM, read here without ZFS; and the VM
runner's own options, shown by a boot (test_runner.py).

``images`` builds them once (``testpool/userland_images.py`` in the VM, one boot, a few
minutes) and caches them under ``~/.cache/dsg-storage/userland-images/<key>``, the key
being the builder's bytes. A test that cannot get its images fails with the reason.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILDER = ROOT / "testpool" / "userland_images.py"


def images_dir() -> Path:
    key = hashlib.sha256(BUILDER.read_bytes()).hexdigest()[:16]
    return Path.home() / ".cache" / "dsg-storage" / "userland-images" / key


@pytest.fixture(scope="session")
def images() -> Path:
    final = images_dir()
    if (final / "done").is_file():
        return final
    scratch = ROOT / ".userland-images.tmp"  # the VM writes through the shared checkout
    shutil.rmtree(scratch, ignore_errors=True)
    result = subprocess.run(
        [str(ROOT / "testpool" / "run"), "--timeout", "1500", "python3", str(BUILDER), str(scratch)],
        cwd=ROOT,
        check=False,
    )
    if result.returncode != 0 or not (scratch / "done").is_file():
        shutil.rmtree(scratch, ignore_errors=True)
        pytest.fail(f"the pool images could not be built in the VM (testpool/run exit {result.returncode})")
    final.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(final, ignore_errors=True)
    shutil.move(str(scratch), str(final))
    return final
