"""Model surgery (surgery.py): parameter groups with their own lr, freezing (BatchNorm kept in eval), dropout."""

from __future__ import annotations

import pytest
import torch

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
