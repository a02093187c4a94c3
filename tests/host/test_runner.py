"""The VM runner's options that only a boot can show (one short boot each)."""

from __future__ import annotations

import subprocess

from .conftest import ROOT


def test_pool_size_gives_a_pool_that_big_on_a_disk_of_its_own() -> None:
    # Bigger than the image's free space (~3 GB): it fits only on the pool disk.
    probe = (
        'echo "size=$(zpool list -H -p -o size dsgtest)"; '
        'echo "source=$(df --output=source /var/lib/dsg-storage-testpool | tail -n 1)"; '
        'echo "mode=$(stat -c %a /var/lib/dsg-storage-testpool)"'
    )
    result = subprocess.run(
        [str(ROOT / "testpool" / "run"), "--timeout", "600", "--pool-size", "5G", "sh", "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # the guest's console (the kernel's lines among them) is the run's output
    seen = dict(line.strip().split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    # ZFS keeps some of the file to itself (labels, metaslab alignment): 4.5 GiB of 5
    assert 4 * 2**30 < int(seen["size"]) <= 5 * 2**30
    assert seen["source"] == "/dev/vdb"
    assert seen["mode"] == "700"
