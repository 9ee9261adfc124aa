"""The benchmark scripts run in their smoke mode, so they do not rot."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # each a subprocess training small models: make test runs them, make test-fast not


@pytest.mark.parametrize("script, headline, low, high", [
    ("overhead.py", "overhead_ratio_vs_plain_loop", 0.0, float("inf")),
    ("stack_mnist_pairs.py", "stack_gain_vs_best_single", -1.0, 1.0),
    ("stack_low_data.py", "stack_gain_points", -100.0, 100.0),
    ("sequences_long.py", "sequences_long_min_margin_vs_minirocket", -1.0, 1.0),
    ("sequences_stack.py", "sequences_stack_min_gain_vs_best_base", -1.0, 1.0),
    ("pairs_second_set.py", "worst_recipe_minus_plain_cnn", -1.0, 1.0),
    ("domain_shift.py", "recovered_fraction", -1000.0, 1000.0),
    ("fanout.py", "fanout_wall_time_ratio", 0.0, float("inf")),
    ("curriculum_vs_single.py", "curriculum_minus_single_test_accuracy", -1.0, 1.0),
    ("data_loading.py", "min_loader_to_step_ratio", 0.0, float("inf")),
    ("scaling.py", "worst_epoch_time_linearity", 0.0, float("inf")),
    ("data_memory.py", "peak_rss_ratio_16x_vs_1x", 0.5, 1.25),
    ("startup.py", "cli_help_over_torch_import", 0.0, float("inf")),
    ("search.py", "search_time_ratio_vs_whole_run_search", 0.0, float("inf")),
    ("auto.py", "auto_min_margin_vs_recommended_recipe", -1.0, 1.0),
    ("gpu_models.py", "gpu_model_checks_failed", 0.0, 0.0),
    pytest.param("speech_baseline.py", "speech_baseline_test_error_f1", 0.0, 1.0, marks=pytest.mark.skipif(
        shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (make install)")),
    pytest.param("speech_feedback.py", "speech_feedback_worst_per_over_echo", 0.0, 5.0, marks=pytest.mark.skipif(
        shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (make install)")),
])
def test_benchmark_quick_mode_prints_its_headline(script, headline, low, high):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--quick"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    name, value = proc.stdout.strip().splitlines()[-1].split(": ")
    assert name == headline
    assert low < float(value) if high == float("inf") else low <= float(value) <= high


def test_speech_feedback_refuses_a_bad_seed_list_before_it_trains():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "speech_feedback.py"), "--seeds", "42,x"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "argument --seeds: invalid seed_list value: '42,x'" in proc.stderr
    assert "Traceback" not in proc.stderr
