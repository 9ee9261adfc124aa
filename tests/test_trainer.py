"""StageTrainer pieces: parameter groups with their own lr, freezing, dropout, precision checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hfstage.cli import main
from hfstage.errors import ConfigError
from hfstage.models import build_model
from hfstage.surgery import freeze, set_dropout
from hfstage.trainer import StageTrainer, StageTrainingArguments

TINY = {"type": "pair_cnn", "channels": [4, 8], "feat_dim": 16, "hidden_dim": 16}


def test_lr_multipliers_make_parameter_groups(tmp_path):
    model = build_model(TINY)
    args = StageTrainingArguments(output_dir=str(tmp_path), learning_rate=1e-3, weight_decay=0.1, use_cpu=True,
                                  report_to="none", lr_multipliers={"head.*": 10.0, "encoder.0.*": 0.1})
    trainer = StageTrainer(model=model, args=args)
    opt = trainer.create_optimizer()
    lr_of = {}
    for group in opt.param_groups:
        for p in group["params"]:
            lr_of[id(p)] = (group["lr"], group["weight_decay"])
    named = dict(model.named_parameters())
    assert lr_of[id(named["head.0.weight"])] == (pytest.approx(1e-2), 0.1)
    assert lr_of[id(named["head.0.bias"])] == (pytest.approx(1e-2), 0.0)  # no decay on biases
    assert lr_of[id(named["encoder.0.0.weight"])][0] == pytest.approx(1e-4)
    assert lr_of[id(named["encoder.1.0.weight"])][0] == pytest.approx(1e-3)
    assert len(lr_of) == len(named)


def test_freeze_excludes_parameters_and_keeps_frozen_batchnorm_in_eval(tmp_path):
    model = build_model(TINY)
    n = freeze(model, ["encoder.*"], "stages.1")
    assert n == sum(p.numel() for name, p in model.named_parameters() if name.startswith("encoder."))
    model.train()
    running = model.encoder[0][1].running_mean.clone()
    model(pixel_values=torch.rand(8, 2, 28, 28))
    assert torch.equal(model.encoder[0][1].running_mean, running)
    assert not model.encoder.training and model.head.training
    with pytest.raises(ConfigError, match="'enc.*' matches no parameter"):
        freeze(build_model(TINY), ["enc.*"], "stages.1")


def test_set_dropout():
    model = build_model(TINY)
    set_dropout(model, 0.4)
    assert [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)] == [0.4]


@pytest.mark.parametrize("override, message", [
    ("stages.1.freeze_patterns=[nothing.*]", "stages.1 (baseline).freeze_patterns: 'nothing.*' matches no parameter"),
    ("stages.1.freeze_patterns=['*']", "every parameter would be frozen"),
    ("stages.2.lr_multipliers={tail.*: 2}", "stages.2 (augmentation).lr_multipliers: 'tail.*' matches no parameter"),
    ("stages.2.augmentation.blur=1", "unknown pair augmentation 'blur'"),
    ("stages.2.augmentation.shift=0.9", "augmentation.shift: 0.9 must be in [0, 0.5]"),
    ("stages.1.mixed_precision=fp16", "fp16 needs a GPU"),
    ("stages.1.loss=hinge", "unknown loss 'hinge'"),
    ("task=pairs", "unknown task 'pairs' (did you mean 'pair_classification'?)"),
])
def test_plan_and_train_refuse_bad_stage_settings(recipe, tmp_path, capsys, override, message):
    path = recipe()
    for command in ("plan", "train"):
        assert main([command, "--config", str(path), override]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_plan_prints_what_each_stage_changes(recipe, capsys):
    path = recipe()
    assert main(["plan", "--config", str(path), "stages.3.freeze_patterns=[encoder.*]", "stages.3.loss=focal"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:6] == ["#", "name", "epochs", "lr", "scheduler", "loss"]
    row3 = next(line for line in lines if line.startswith("3 "))
    assert "focal(alpha=1,gamma=2,label_smoothing=0.1)" in row3 and "dropout=0.3" in row3
    frozen, total = row3.split()[6].split("/")
    assert 0 < int(frozen) < int(total)
    assert "shift=0.1,swap=0.5" in next(line for line in lines if line.startswith("2 "))


@pytest.mark.parametrize("recipe_file", sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")))
def test_every_shipped_recipe_plans(recipe_file, capsys):
    assert main(["plan", "--config", str(recipe_file)]) == 0
    assert "task " in capsys.readouterr().out


def test_gradient_clipping_clips_and_reports_the_norm_before_clipping(tmp_path):
    """StageTrainer clips through torch directly in the plain case; the result must be what
    ``clip_grad_norm_`` gives: the pre-clip norm returned, the gradients scaled to max_grad_norm."""
    from hfstage.data.npz_pairs import PairCollator

    torch.manual_seed(0)
    model = build_model(TINY)
    args = StageTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_grad_norm=1e-3,
                                  loss="cross_entropy")
    trainer = StageTrainer(model=model, args=args, data_collator=PairCollator())
    batch = {"pixel_values": torch.randint(0, 255, (8, 2, 28, 28), dtype=torch.uint8),
             "labels": torch.tensor([0, 1] * 4)}
    inputs = PairCollator()(batch)
    model.train()
    trainer.compute_loss(model, dict(inputs)).backward()
    expected = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    norm = trainer._clip_grad_norm(model)
    assert float(norm) == pytest.approx(float(expected), rel=1e-5) and float(expected) > 1e-3
    after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert float(after) == pytest.approx(1e-3, rel=1e-3)
    assert trainer._clip_params  # the direct path was taken (one process, no DTensor)


def test_per_step_costs_removed_without_side_effects(tmp_path):
    """accelerate's lomo_optim probe answers from a cache; the GC freeze of a stage is undone after it."""
    import gc

    from accelerate import optimizer as acc_optimizer

    from hfstage.data.npz_pairs import PairCollator, PairDataset

    x = torch.randint(0, 255, (64, 2, 28, 28), dtype=torch.uint8).numpy()
    y = torch.randint(0, 2, (64,)).numpy()
    args = StageTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_steps=3,
                                  per_device_train_batch_size=16, save_strategy="no", disable_tqdm=True,
                                  remove_unused_columns=False, label_names=["labels"])
    trainer = StageTrainer(model=build_model(TINY), args=args, train_dataset=PairDataset(x, y),
                           data_collator=PairCollator())
    assert hasattr(acc_optimizer.is_lomo_available, "cache_info")  # cached once a stage trainer exists
    acc_optimizer.is_lomo_available()
    assert acc_optimizer.is_lomo_available.cache_info().hits + acc_optimizer.is_lomo_available.cache_info().misses >= 1
    before = gc.get_freeze_count()
    trainer.train()
    assert gc.get_freeze_count() == before
    gc.freeze()  # another owner's freeze is left as it was: nothing more is frozen, nothing thawed
    try:
        before = gc.get_freeze_count()
        alive = [[] for _ in range(5000)]  # created after that freeze: a second freeze would take them too
        trainer.train()
        assert alive and 0 < gc.get_freeze_count() <= before  # (frozen objects still die when their last reference goes)
    finally:
        gc.unfreeze()
    from hfstage import devices

    assert devices._allocator_tuned is not None  # decided (and, on glibc, made) when the stage trained
    assert trainer.model_accepts_loss_kwargs is False and trainer._n_params == trainer.model.num_parameters(
        exclude_embeddings=True)
