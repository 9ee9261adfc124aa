import math

import pytest
import torch

from hfstage.losses import LOSSES
from hfstage.losses.cross_entropy import CrossEntropyLoss
from hfstage.losses.focal import FocalLoss


def sigmoid(z):
    return 1 / (1 + math.exp(-z))


def test_registry_names():
    assert {"cross_entropy", "focal"} <= set(LOSSES.names())


def test_binary_cross_entropy_by_hand():
    logits, labels = torch.tensor([0.5, -1.0]), torch.tensor([1, 0])
    expected = (-math.log(sigmoid(0.5)) - math.log(1 - sigmoid(-1.0))) / 2
    assert CrossEntropyLoss()(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_binary_label_smoothing_by_hand():
    eps = 0.2
    logits, labels = torch.tensor([2.0]), torch.tensor([1])
    q = 1 - eps / 2  # target 0.9 for the positive class
    expected = -(q * math.log(sigmoid(2.0)) + (1 - q) * math.log(1 - sigmoid(2.0)))
    assert CrossEntropyLoss(eps)(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_multiclass_label_smoothing_by_hand():
    eps = 0.1
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    logp = torch.log_softmax(logits, -1)[0]
    q = torch.tensor([1 - eps + eps / 3, eps / 3, eps / 3])
    expected = -(q * logp).sum().item()
    assert CrossEntropyLoss(eps)(logits, torch.tensor([0])).item() == pytest.approx(expected, rel=1e-6)


def test_binary_focal_by_hand():
    alpha, gamma = 0.5, 2.0
    logits, labels = torch.tensor([1.0, 0.3]), torch.tensor([1, 0])
    p1, p2 = sigmoid(1.0), 1 - sigmoid(0.3)  # p_t of each sample
    expected = (alpha * (1 - p1) ** gamma * -math.log(p1) + alpha * (1 - p2) ** gamma * -math.log(p2)) / 2
    assert FocalLoss(alpha, gamma)(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_multiclass_focal_by_hand():
    logits = torch.tensor([[1.0, 2.0, 0.5]])
    p = torch.softmax(logits, -1)[0, 1].item()
    expected = 1.0 * (1 - p) ** 3 * -math.log(p)
    assert FocalLoss(1.0, 3.0)(logits, torch.tensor([1])).item() == pytest.approx(expected, rel=1e-6)


def test_focal_gamma_zero_is_cross_entropy():
    logits, labels = torch.randn(16), torch.randint(0, 2, (16,))
    assert FocalLoss(1.0, 0.0)(logits, labels).item() == pytest.approx(CrossEntropyLoss()(logits, labels).item(), rel=1e-6)
    logits, labels = torch.randn(16, 5), torch.randint(0, 5, (16,))
    assert FocalLoss(1.0, 0.0)(logits, labels).item() == pytest.approx(CrossEntropyLoss()(logits, labels).item(), rel=1e-6)


def test_distillation_by_hand():
    from hfstage.losses.distillation import DistillationLoss

    t, alpha = 2.0, 0.25
    student, teacher, labels = torch.tensor([1.0]), torch.tensor([3.0]), torch.tensor([1])
    p_s = torch.softmax(torch.tensor([0.0, 1.0]) / t, 0)
    p_t = torch.softmax(torch.tensor([0.0, 3.0]) / t, 0)
    kl = (p_t * (p_t.log() - p_s.log())).sum().item()
    hard = -math.log(sigmoid(1.0))
    expected = (1 - alpha) * hard + alpha * t * t * kl
    loss = DistillationLoss(CrossEntropyLoss(), t, alpha)(student, labels, teacher)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # a student that already matches its teacher pays only the hard term
    same = DistillationLoss(CrossEntropyLoss(), t, 1.0)(torch.tensor([[0.2, 1.0, -1.0]]), torch.tensor([0]),
                                                        torch.tensor([[0.2, 1.0, -1.0]]))
    assert same.item() == pytest.approx(0.0, abs=1e-6)


def test_arcface_against_hand_computed_values():
    import math

    from hfstage.losses.arcface import ArcFaceLoss

    s, m = 10.0, 0.5
    cos = torch.tensor([[0.8, 0.1, -0.2], [0.3, 0.6, 0.2], [-0.95, 0.1, 0.0]])
    labels = torch.tensor([0, 1, 0])
    loss = ArcFaceLoss(margin=m, scale=s)(s * cos, labels)
    expected = 0.0
    for row, y in zip(cos.tolist(), labels.tolist()):
        theta = math.acos(row[y])
        # theta + m past pi (third sample, cos = -0.95): the linear fallback cos(theta) - m sin(m)
        target = math.cos(theta + m) if theta + m <= math.pi else row[y] - m * math.sin(m)
        z = [s * (target if j == y else c) for j, c in enumerate(row)]
        expected += -(z[y] - math.log(sum(math.exp(v) for v in z)))
    assert loss.item() == pytest.approx(expected / 3, rel=1e-5)
    # no margin: plain cross-entropy of the scaled cosines
    assert ArcFaceLoss(margin=0.0, scale=s)(s * cos, labels).item() == pytest.approx(
        torch.nn.functional.cross_entropy(s * cos, labels).item(), rel=1e-5)


def test_arcface_needs_a_cosine_head():
    from hfstage.errors import ConfigError
    from hfstage.losses.arcface import ArcFaceLoss
    from hfstage.models import build_model

    linear = build_model({"type": "timm", "backbone": "test_efficientnet", "image_size": 32}, num_labels=3)
    with pytest.raises(ConfigError, match="model.head: cosine"):
        ArcFaceLoss().bind_model(linear)
    cosine = build_model({"type": "timm", "backbone": "test_efficientnet", "image_size": 32, "head": "cosine",
                          "cosine_scale": 16}, num_labels=3)
    loss = ArcFaceLoss()
    loss.bind_model(cosine)
    assert loss.scale == 16.0
    logits = cosine(torch.randn(2, 3, 32, 32)).logits
    assert logits.abs().max() <= 16.0 + 1e-4  # s * cos(theta)


def test_cross_entropy_with_soft_targets_from_mixup():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    soft = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.5, 0.5]])
    logp = torch.log_softmax(logits, dim=-1)
    expected = -(soft * logp).sum(1).mean()
    assert CrossEntropyLoss()(logits, soft).item() == pytest.approx(expected.item(), rel=1e-6)
    eps = 0.1
    smoothed = soft * (1 - eps) + eps / 3
    assert CrossEntropyLoss(eps)(logits, soft).item() == pytest.approx(-(smoothed * logp).sum(1).mean().item(), rel=1e-6)


# ------------------------------------------------------------------------------------------------
# Losses own their parameters: the recipe's `loss:` reaches the loss the trainer builds


def _trainer_loss(cfg, tmp_path):
    from hfstage.models import build_model
    from hfstage.trainer import StageTrainer, StageTrainingArguments

    stage = cfg.stages[0]
    args = StageTrainingArguments(output_dir=str(tmp_path / "t"), use_cpu=True, report_to="none", loss=stage.loss,
                                  label_smoothing=stage.label_smoothing)
    model = build_model({"type": "pair_cnn", "channels": [4], "feat_dim": 8, "hidden_dim": 8})
    return StageTrainer(model=model, args=args).train_loss_fn


@pytest.mark.parametrize("recipe_loss, alpha", [
    ("loss: focal", 1.0),  # the name only: the override reaches into its defaults
    ("loss: {type: focal, gamma: 2.0, alpha: 0.5}", 0.5),  # the mapping form
    ("defaults: {loss: focal}", 1.0),  # the loss comes from the defaults block
])
def test_stage_loss_override_reaches_the_focal_loss(tmp_path, recipe_loss, alpha):
    from hfstage.config import load_config

    on_stage = not recipe_loss.startswith("defaults")
    path = tmp_path / "r.yaml"
    path.write_text(f"{'' if on_stage else recipe_loss}\nstages:\n  - name: a\n    {recipe_loss if on_stage else ''}\n")
    cfg = load_config(path, ["stages.1.loss.gamma=3"])
    assert cfg.stages[0].loss == {"type": "focal", "alpha": alpha, "gamma": 3.0}
    loss = _trainer_loss(cfg, tmp_path)
    logits, labels = torch.tensor([1.0, 0.3]), torch.tensor([1, 0])
    p1, p2 = sigmoid(1.0), 1 - sigmoid(0.3)
    expected = alpha * ((1 - p1) ** 3 * -math.log(p1) + (1 - p2) ** 3 * -math.log(p2)) / 2
    assert loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_label_smoothing_is_a_stage_field_every_loss_receives(tmp_path):
    from hfstage.config import load_config

    path = tmp_path / "r.yaml"
    path.write_text("stages:\n  - {name: a, loss: {type: focal, gamma: 0.0}, label_smoothing: 0.2}\n")
    loss = _trainer_loss(load_config(path), tmp_path)
    logits, labels = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0])
    assert loss(logits, labels).item() == pytest.approx(CrossEntropyLoss(0.2)(logits, labels).item(), rel=1e-6)


def test_old_flat_loss_fields_are_refused_with_the_new_form(recipe, capsys):
    from hfstage.cli import main

    assert main(["plan", "--config", str(recipe()), "stages.1.focal_gamma=3"]) == 2
    err = capsys.readouterr().err
    assert "stages.1.focal_gamma: loss parameters belong to the loss now: use loss.gamma" in err
    assert "loss: {type: focal, gamma: 3}" in err


def test_plan_shows_every_loss_with_its_arguments(recipe, capsys):
    from hfstage.cli import main

    assert main(["plan", "--config", str(recipe()), "stages.1.loss={type: focal, gamma: 1.5}",
                 "stages.2.loss=focal"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "focal(alpha=1,gamma=1.5)" in next(line for line in lines if line.startswith("1 "))
    assert "focal(alpha=1,gamma=2)" in next(line for line in lines if line.startswith("2 "))
    assert "cross_entropy(label_smoothing=0.1)" in next(line for line in lines if line.startswith("3 "))


def test_distillation_wraps_the_speech_loss():
    """One call convention: the speech loss's frame posteriors (real frames only) and error logits are distilled."""
    from hfstage.losses.distillation import DistillationLoss
    from hfstage.losses.speech import CTCMispronunciationLoss

    torch.manual_seed(0)
    outputs = {"logits": torch.randn(2, 6, 5), "output_lengths": torch.tensor([6, 4]),
               "error_logits": torch.randn(2, 3)}
    labels = torch.tensor([[1, 2, -100], [3, -100, -100]])
    error_labels = torch.tensor([[0, 1, 0], [1, -100, -100]])
    speech = CTCMispronunciationLoss()
    hard = speech(outputs, labels, error_labels).item()
    loss = DistillationLoss(speech, temperature=2.0, alpha=0.4)
    assert loss.label_keys == ("error_labels",)
    # a teacher that agrees with the model leaves only the hard term
    assert loss(outputs, labels, outputs, error_labels=error_labels).item() == pytest.approx(0.6 * hard, rel=1e-6)
    teacher = {k: v.clone() for k, v in outputs.items()}
    teacher["logits"][1, 4:] += 10.0  # padded frames of the second clip: never distilled
    assert loss(outputs, labels, teacher, error_labels=error_labels).item() == pytest.approx(0.6 * hard, rel=1e-6)
    teacher["error_logits"][0, 1] += 3.0  # a real canonical phoneme: distilled, by hand
    t = 2.0
    s = torch.tensor([0.0, outputs["error_logits"][0, 1].item()]) / t
    q = torch.tensor([0.0, teacher["error_logits"][0, 1].item()]) / t
    kl = (q.softmax(0) * (q.log_softmax(0) - s.log_softmax(0))).sum().item() / 4  # batchmean over 4 real phonemes
    expected = 0.6 * hard + 0.4 * t * t * kl
    assert loss(outputs, labels, teacher, error_labels=error_labels).item() == pytest.approx(expected, rel=1e-5)
