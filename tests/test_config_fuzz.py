"""Property-based: whatever text a user types, the config loader answers with a ConfigError or a config."""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hfstage.config import apply_override, build_run_config, load_config
from hfstage.errors import ConfigError

BASE = {"defaults": {"lr": 1e-3}, "stages": [{"name": "baseline"}, {"name": "finetune", "epochs": 2}]}
KEYS = st.sampled_from(["lr", "epochs", "stages", "stages.1", "stages.2.lr", "stages.baseline.augmentation.shift",
                        "data", "data.path", "model", "model.type", "defaults", "defaults.batch_size", "seed",
                        "quick_test", "stages.finetune.freeze_patterns", "report_to", "x.y.z", "stages.0.lr"])
VALUES = st.one_of(st.text(max_size=20), st.sampled_from(["[1, 2", "{a: 1}", "null", "-1", "1e-4", "nan", "inf",
                                                          "[]", "{}", "true", "'quoted'", ": :", "&a *a"]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.text(max_size=30), st.builds(lambda k, v: f"{k}={v}", KEYS, VALUES)), max_size=4))
def test_overrides_never_crash(overrides):
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    try:
        for text in overrides:
            apply_override(raw, text)
        build_run_config(raw, "fuzz.yaml")
    except ConfigError:
        pass


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.text(max_size=200))
def test_arbitrary_yaml_text_never_crashes(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(path)
    except ConfigError:
        pass
