import pytest
import yaml

from hfstage.config import (
    StageConfig,
    apply_override,
    build_run_config,
    load_config,
)
from hfstage.errors import ConfigError

BASE = {
    "output_dir": "runs/x",
    "defaults": {"lr": "1e-3", "batch_size": 64},
    "stages": [{"name": "baseline", "epochs": 2}, {"name": "finetune", "lr": 1.0e-4}],
}


def write(tmp_path, data, name="c.yaml"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_defaults_fill_stages_and_strings_become_numbers(tmp_path):
    cfg = load_config(write(tmp_path, BASE))
    assert [s.name for s in cfg.stages] == ["baseline", "finetune"]
    assert cfg.stages[0].lr == pytest.approx(1e-3)  # "1e-3" is a string to PyYAML
    assert cfg.stages[1].lr == pytest.approx(1e-4)  # the stage wins over defaults
    assert cfg.stages[0].batch_size == cfg.stages[1].batch_size == 64
    assert cfg.stages[0].epochs == 2 and cfg.stages[1].epochs == StageConfig().epochs


def test_overrides_by_index_name_nested_and_defaults(tmp_path):
    cfg = load_config(
        write(tmp_path, BASE),
        ["stages.2.lr=5e-5", "stages.baseline.label_smoothing=0.2", "data.path=/d", "defaults.weight_decay=0.1",
         "stages.finetune.augmentation.shift=0.1", "stages.1.freeze_patterns=[encoder.*]", "seed=7"],
    )
    assert cfg.stages[1].lr == pytest.approx(5e-5)
    assert cfg.stages[0].label_smoothing == pytest.approx(0.2)
    assert cfg.data.path == "/d" and cfg.seed == 7
    assert cfg.stages[0].weight_decay == cfg.stages[1].weight_decay == pytest.approx(0.1)
    assert cfg.stages[1].augmentation == {"shift": 0.1}
    assert cfg.stages[0].freeze_patterns == ["encoder.*"]


def test_quick_test_sets_one_epoch_and_subsets(tmp_path):
    cfg = load_config(write(tmp_path, BASE), ["quick_test=true", "quick_test_samples=100"])
    assert all(s.epochs == 1 for s in cfg.stages)
    assert cfg.data.max_train_samples == 100 and cfg.data.max_eval_samples == 50


@pytest.mark.parametrize(
    "override, message",
    [
        ("stages.1.lrr=1", "stages.1.lrr: unknown key (did you mean 'lr'?)"),
        ("outptu_dir=x", "outptu_dir: unknown key (did you mean 'output_dir'?)"),
        ("data.pth=x", "data.pth: unknown key (did you mean 'path'?)"),
        ("stages.1.lr=-1", "stages.1.lr: -1.0 must be > 0"),
        ("stages.1.lr=fast", "stages.1.lr: expected a number, got 'fast'"),
        ("stages.1.lr=inf", "stages.1.lr: inf is not allowed"),
        ("improvement_threshold=nan", "improvement_threshold: nan is not allowed"),
        ("stages.1.label_smoothing=1.0", "stages.1.label_smoothing: 1.0 must be in [0, 1)"),
        ("stages.1.loss={type: focal, gamma: -2}", "stages.1.loss.gamma: -2.0 must be >= 0"),
        ("stages.1.loss.gamma=2", "stages.1.loss.gamma: unknown argument of loss 'cross_entropy'; it takes no arguments"),
        ("stages.1.loss={type: focal, gama: 2}", "stages.1.loss.gama: unknown argument of loss 'focal' (did you mean 'gamma'?); it takes: alpha, gamma"),
        ("stages.1.focal_gamma=3", "use loss.gamma, i.e. loss: {type: focal, gamma: 3}"),
        ("defaults.distill_alpha=0.7", "use teacher.alpha"),
        ("stages.1.loss.label_smoothing=0.1", "label smoothing is a stage field"),
        ("stages.1.loss={type: ctc_mispronunciation, pos_weight: 0}", "stages.1.loss.pos_weight: 0.0 must be > 0"),
        ("stages.1.teacher.alpha=0.5", "stages.1.teacher.checkpoint: missing"),
        ("stages.1.teacher={checkpoint: runs/x, alpha: 2}", "stages.1.teacher.alpha: 2.0 must be in [0, 1]"),
        ("stages.1.batch_size=2.5", "stages.1.batch_size: expected an integer"),
        ("quick_test=maybe", "quick_test: expected true or false"),
        ("stages.3.lr=1", "there is no stage 3; stages are numbered 1 to 2"),
        ("stages.0.lr=1", "there is no stage 0"),
        ("stages.finetuen.lr=1", "no stage named 'finetuen' (did you mean 'finetune'?)"),
        ("stages.1.scheduler=wavy", "is not a transformers SchedulerType; choose one of linear"),
        ("stages.2.name=baseline", "stage name 'baseline' is used twice"),
        ("stages.2.name=../evil", "must be letters, digits"),
        ("defaults.lr=0", "defaults.lr: 0.0 must be > 0"),
        ("nonsense", "expected key=value"),
    ],
)
def test_bad_values_name_file_and_key(tmp_path, override, message):
    path = write(tmp_path, BASE)
    with pytest.raises(ConfigError) as err:
        load_config(path, [override])
    assert message in str(err.value)
    assert str(path) in str(err.value) or "override" in str(err.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("stages: [\n  - name: a\n    lr: [1,\n", "malformed YAML (line"),
        ("", "the file is empty"),
        ("- just\n- a list\n", "top level must be a mapping"),
        ("stages: []\n", "at least one stage"),
        ("stages:\n  - 3\n", "stages.1: expected a mapping"),
        ("model: {channels: [1]}\nstages: [{name: a}]\n", "model.type: missing"),
    ],
)
def test_bad_files(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("/nonexistent/recipe.yaml")


def test_apply_override_creates_nested_dicts():
    raw = {"stages": [{"name": "a"}]}
    apply_override(raw, "stages.a.lr_multipliers.head*=10")
    assert raw["stages"][0]["lr_multipliers"] == {"head*": 10}


def test_round_trip_through_dict(tmp_path):
    cfg = load_config(write(tmp_path, BASE), ["quick_test=true"])
    assert cfg.defaults == {"lr": 1e-3, "batch_size": 64}
    again = build_run_config({**cfg.to_dict(), "quick_test": False})
    assert again.to_dict() == {**cfg.to_dict(), "quick_test": False}


def test_init_from_must_name_an_earlier_stage(tmp_path):
    path = write(tmp_path, BASE)
    cfg = load_config(path, ["stages.2.init_from=baseline"])
    assert cfg.stages[1].init_from == "baseline"
    assert load_config(path, ["stages.2.init_from=1"]).stages[1].init_from == "1"
    for bad in ("stages.1.init_from=finetune", "stages.2.init_from=2", "stages.2.init_from=nope"):
        with pytest.raises(ConfigError, match="is not an earlier stage"):
            load_config(path, [bad])
