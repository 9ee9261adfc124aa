"""hfstage's malloc settings for training (``hfstage.devices.tune_cpu_allocator``), checked by page faults.

Each case runs in its own interpreter: the settings are process-wide and made once per process.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the settings are glibc malloc's")

# What a training step does to the allocator: several large blocks allocated, written and all freed
# again; prints whether the settings are in force and the page faults of one such step.
CHURN = """
import resource, sys, torch
from hfstage.devices import tune_cpu_allocator
tuned = tune_cpu_allocator()
def step():
    blocks = [torch.ones(6 << 20) for _ in range(6)]  # 6 x 24 MiB
    del blocks
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(tuned, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 5)
"""


def _churn(**env_overrides):
    env = {k: v for k, v in os.environ.items() if not (k.startswith("MALLOC_") or k == "GLIBC_TUNABLES")}
    env.update(env_overrides)
    proc = subprocess.run([sys.executable, "-c", CHURN], capture_output=True, text=True, env=env, timeout=120)
    return proc


def test_tuned_malloc_keeps_a_steps_memory_instead_of_faulting_it_back_in():
    tuned, faults = _churn().stdout.split()
    default, default_faults = _churn(HFSTAGE_MALLOC_TUNING="0").stdout.split()
    assert (tuned, default) == ("True", "False")
    # 144 MiB written per step: ~37,000 4-KiB pages re-faulted each step with glibc's defaults, none tuned
    assert int(default_faults) > 10_000, default_faults
    assert int(faults) < 100, faults


def test_users_own_allocator_choice_is_left_alone_and_bad_values_are_refused():
    assert _churn(MALLOC_TRIM_THRESHOLD_="1000000").stdout.split()[0] == "False"
    assert _churn(GLIBC_TUNABLES="glibc.malloc.trim_threshold=1000000").stdout.split()[0] == "False"
    proc = _churn(HFSTAGE_MALLOC_TUNING="maybe")
    assert proc.returncode != 0
    assert "environment variable HFSTAGE_MALLOC_TUNING='maybe': expected 1 or 0" in proc.stderr
