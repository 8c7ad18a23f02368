"""bench/gpu_check.py starts and finishes on the CPU (--cpu --section device): it exits 0 and
prints its table (the device path against the float64 kernel, and the times of the baselines,
which are not checked: no timing is asserted)."""
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "gpu_check.py")


def test_gpu_check_runs_on_the_cpu():
    done = subprocess.run([sys.executable, SCRIPT, "--cpu", "--section", "device"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    rows = [line for line in lines if line.strip().startswith("4096 ")]
    assert len(rows) == 4, done.stdout  # 2 dtypes x 2 specs at 2^12 tokens
    assert any("worst relative error" in line for line in lines), done.stdout
