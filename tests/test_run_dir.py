"""The run folder's decisions (run_dir.py): which stage is kept, which is best, where the next one starts, on crafted metrics."""

from __future__ import annotations

import pytest

from hfstage.config import build_run_config
from hfstage.errors import ConfigError
from hfstage.run_dir import StageRecord, best_kept, decide_kept, latest_kept


def cfg_with(threshold: float, metric: str = "eval_loss"):
    return build_run_config({"improvement_threshold": threshold, "metric_for_best_model": metric,
                             "stages": [{"name": "a"}]})


def rec(i, value, kept=True, key="eval_loss"):
    return StageRecord(stage_index=i, stage_name=f"s{i}", kept=kept, metrics={key: value})


def test_first_stage_is_always_kept():
    assert decide_kept(cfg_with(0.5), [], {"eval_loss": 9.0}) == (True, None)


def test_loss_must_improve_by_threshold():
    cfg = cfg_with(0.01)
    records = [rec(1, 0.50)]
    kept, gain = decide_kept(cfg, records, {"eval_loss": 0.495})
    assert not kept and gain == pytest.approx(0.005)
    kept, gain = decide_kept(cfg, records, {"eval_loss": 0.48})
    assert kept and gain == pytest.approx(0.02)


def test_negative_threshold_keeps_a_worse_stage():
    kept, gain = decide_kept(cfg_with(-1), [rec(1, 0.5)], {"eval_loss": 0.9})
    assert kept and gain == pytest.approx(-0.4)


def test_accuracy_is_greater_is_better():
    cfg = cfg_with(0.0, "eval_accuracy")
    records = [rec(1, 0.90, key="eval_accuracy")]
    assert decide_kept(cfg, records, {"eval_accuracy": 0.91})[0]
    assert not decide_kept(cfg, records, {"eval_accuracy": 0.89})[0]


def test_best_kept_ignores_stages_not_kept():
    cfg = cfg_with(0.0)
    records = [rec(1, 0.5), rec(2, 0.1, kept=False), rec(3, 0.4)]
    assert best_kept(cfg, records).stage_index == 3
    # the reference for the next stage is the best KEPT stage (0.4), not the skipped 0.1
    assert decide_kept(cfg, records, {"eval_loss": 0.3})[0]


def test_next_stage_starts_from_the_latest_kept_stage():
    records = [rec(1, 0.5), rec(2, 0.6), rec(3, 0.1, kept=False)]
    assert latest_kept(records).stage_index == 2  # kept (threshold < 0) though worse than stage 1
    assert best_kept(cfg_with(-1), records).stage_index == 1  # ... while the run's best stage is 1


def test_unknown_tracked_metric_is_a_config_error():
    with pytest.raises(ConfigError, match="eval_auc"):
        decide_kept(cfg_with(0.0, "eval_auc"), [], {"eval_loss": 1.0})
