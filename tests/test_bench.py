"""The benchmark scripts run in their smoke mode, so they do not rot."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_overhead_benchmark_quick():
    proc = subprocess.run([sys.executable, str(ROOT / "bench/overhead.py"), "--quick"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    name, value = last.split(": ")
    assert name == "overhead_ratio_vs_plain_loop" and float(value) > 0


def test_stacking_benchmark_quick():
    proc = subprocess.run([sys.executable, str(ROOT / "bench/stack_mnist_pairs.py"), "--quick"], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    name, value = proc.stdout.strip().splitlines()[-1].split(": ")
    assert name == "stack_gain_vs_best_single" and -1 <= float(value) <= 1


def test_curriculum_benchmark_quick():
    proc = subprocess.run([sys.executable, str(ROOT / "bench/curriculum_vs_single.py"), "--quick"], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    name, value = proc.stdout.strip().splitlines()[-1].split(": ")
    assert name == "curriculum_minus_single_test_accuracy" and -1 <= float(value) <= 1
