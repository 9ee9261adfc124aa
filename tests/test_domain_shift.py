"""Train -> test domain adaptation of images: shift statistics, the fitted degradation, AdaBN, the recipe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from hfstage.adapt import recalibrate_batchnorm
from hfstage.cli import main
from hfstage.config import load_config
from hfstage.curriculum import run
from hfstage.data import shift
from hfstage.errors import ConfigError
from hfstage.models import build_model

TINY_TIMM = {"type": "timm", "backbone": "test_efficientnet", "image_size": 32}


def shapes(n: int, size: int = 32, seed: int = 0) -> list[np.ndarray]:
    """Grey images of bright rectangles and discs on a dark background (edges to blur)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for _ in range(n):
        im = np.full((size, size), 0.1, np.float32)
        for _ in range(3):
            x0, y0, w, h = rng.integers(2, size // 2, 4)
            im[y0:y0 + h, x0:x0 + w] = rng.uniform(0.6, 0.9)
        cx, cy, r = rng.integers(6, size - 6, 3)
        im[(xx - cx) ** 2 + (yy - cy) ** 2 < (r % 6 + 3) ** 2] = 0.8
        out.append(np.repeat(im[..., None], 3, axis=2))
    return out


def test_statistics_of_images_with_known_brightness_blur_noise_size_and_colour():
    flat = np.full((24, 48, 3), 0.4, np.float32)
    s = shift.image_statistics(flat)
    assert s["brightness"] == pytest.approx(0.4, abs=1e-6) and s["contrast"] == pytest.approx(0, abs=1e-6)
    assert s["sharpness"] == pytest.approx(0, abs=1e-9) and s["noise"] == pytest.approx(0, abs=1e-9)
    assert (s["width"], s["height"], s["aspect"]) == (48, 24, 2.0)
    for sigma in (0.02, 0.05, 0.1):  # Immerkaer's estimate on pure noise is the noise's sd
        noisy = shift.degrade(flat, noise=sigma, rng=np.random.default_rng(0))
        assert shift.image_statistics(noisy)["noise"] == pytest.approx(sigma, rel=0.08)
    edges = shapes(1)[0]
    sharp = [shift.image_statistics(shift.degrade(edges, blur=b))["sharpness"] for b in (0, 0.5, 1, 2)]
    assert sharp == sorted(sharp, reverse=True) and sharp[-1] < sharp[0] / 10  # blur lowers sharpness
    red = np.zeros((8, 8, 3), np.float32)
    red[..., 0] = 0.6
    s = shift.image_statistics(red)
    assert s["red_balance"] == pytest.approx(0.6) and s["blue_balance"] == pytest.approx(0.0)
    stats = shift.statistics_of([flat, shift.degrade(flat, gain=0.5)])
    assert stats["brightness"].tolist() == pytest.approx([0.4, 0.2])


def test_compare_ranks_the_shifted_statistics_first():
    source = shift.statistics_of(shapes(40, seed=1))
    target = shift.statistics_of(shift.degrade(im, noise=0.1, rng=np.random.default_rng(i))
                                 for i, im in enumerate(shapes(40, seed=2)))
    report = shift.compare(source, target)
    assert set(list(report)[:2]) == {"noise", "sharpness"}  # noise raises the Laplacian's variance too
    assert report["noise"]["ks"] == 1.0 and report["noise"]["shift"] > 3
    assert report["width"]["ks"] == 0 and report["width"]["shift"] == 0
    assert report["brightness"]["ks"] < 0.5  # zero-mean noise barely moves the mean


@pytest.mark.parametrize("params", [{"gain": 0.5, "offset": 0.1, "blur": 1.0, "noise": 0.06},
                                    {"gain": 1.0, "offset": 0.0, "blur": 0.0, "noise": 0.15}])
def test_the_fitted_degradation_recovers_a_known_shift(params):
    train = shapes(32, seed=3)
    target = [shift.degrade(im, rng=np.random.default_rng(i), **params) for i, im in enumerate(shapes(80, seed=4))]
    fit = shift.fit_degradation(train, shift.statistics_of(target))
    assert fit["gain"] == pytest.approx(params["gain"], abs=0.12)
    assert fit["offset"] == pytest.approx(params["offset"], abs=0.06)
    assert fit["blur"] == pytest.approx(params["blur"], abs=0.5)
    assert fit["noise"] == pytest.approx(params["noise"], abs=0.03)
    for key in shift.MATCHED:  # the degraded training images have the target's medians
        assert fit["reached_medians"][key] == pytest.approx(fit["target_medians"][key], rel=0.15, abs=0.005)


def test_no_shift_fits_no_degradation():
    fit = shift.fit_degradation(shapes(32, seed=5), shift.statistics_of(shapes(80, seed=6)))
    assert fit["blur"] <= 0.25 and fit["noise"] <= 0.02
    assert fit["gain"] == pytest.approx(1, abs=0.15) and fit["offset"] == pytest.approx(0, abs=0.05)
    half = shift.scaled_degradation({"gain": 0.5, "offset": 0.2, "blur": 2.0, "noise": 0.1}, 0.5)
    assert half == pytest.approx({"gain": 0.75, "offset": 0.1, "blur": 1.0, "noise": 0.05})


def test_adabn_changes_only_batchnorm_running_statistics_bit_for_bit():
    torch.manual_seed(0)
    model = build_model(TINY_TIMM, num_labels=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = [torch.rand(4, 3, 32, 32) * 0.3 + 0.5 for _ in range(3)]  # a "target domain": brighter, flatter
    record = recalibrate_batchnorm(model, [{"pixel_values": x, "labels": torch.zeros(4)} for x in images])
    after = model.state_dict()
    assert record == {"batchnorm_layers": record["batchnorm_layers"], "target_images": 12, "batches": 3}
    assert record["batchnorm_layers"] > 0
    stats = {k for k in before if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    assert stats and all(torch.equal(before[k], after[k]) for k in before if k not in stats)  # weights untouched
    assert all(not torch.equal(before[k], after[k]) for k in stats if not k.endswith("num_batches_tracked"))
    first = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert first.momentum == 0.1 and model.training and first.training  # as they were


@pytest.fixture(scope="module")
def shifted_data(tmp_path_factory) -> Path:
    from hfstage.data.prepare import prepare_mnist_images

    out = tmp_path_factory.mktemp("mnist_shift")
    summary = prepare_mnist_images(out, seed=0, train_images=120, val_images=40, test_images=40,
                                   shift="dark-blur-noise")
    assert summary["shift"]["name"] == "dark-blur-noise" and summary["splits"]["test_shifted"]["images"] == 40
    return out


def test_prepare_shift_writes_a_labelled_and_an_unlabelled_target_domain(shifted_data):
    clean = sorted((shifted_data / "test").rglob("*.png"))
    moved = sorted((shifted_data / "test_shifted").rglob("*.png"))
    target = sorted((shifted_data / "target").glob("*.png"))
    assert len(clean) == len(moved) == len(target) == 40
    assert [p.relative_to(shifted_data / "test") for p in clean] == [p.relative_to(shifted_data / "test_shifted")
                                                                     for p in moved]
    a = np.asarray(Image.open(clean[0]), dtype=np.float32) / 255
    b = np.asarray(Image.open(moved[0]), dtype=np.float32) / 255
    assert b.std() < a.std() * 0.7 and shift.noise_sigma(b) > shift.noise_sigma(a)
    assert main(["prepare", "mnist-images", "--out", str(shifted_data / "x"), "--shift", "fog"]) == 2


def test_inspect_shift_cli_writes_the_report_and_the_picture(shifted_data, tmp_path, capsys):
    out = tmp_path / "report" / "shift.json"
    assert main(["inspect-shift", "--data", str(shifted_data), "--target", "target", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["source_images"] == 120 and report["target_images"] == 40
    ranked = list(report["statistics"])
    assert set(ranked[:3]) == {"contrast", "noise", "sharpness"} and report["statistics"]["contrast"]["shift"] < 0
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert printed.index("contrast") < printed.index("width")
    assert main(["inspect-shift", "--data", str(shifted_data), "--target", "nowhere", "--out", str(out)]) == 2
    assert "nowhere" in capsys.readouterr().err


@pytest.mark.slow  # a full recipe
def test_domain_shift_recipe_in_quick_test_mode(shifted_data, tmp_path):
    recipe = yaml.safe_load(Path("configs/images_domain_shift.yaml").read_text())
    recipe["model"] = dict(TINY_TIMM)
    recipe["report_to"] = ["none"]
    recipe["defaults"]["batch_size"] = 32
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    cfg = load_config(path, [f"data.path={shifted_data}", f"output_dir={tmp_path / 'run'}", "quick_test=true"])
    final = run(cfg)
    assert [s.status for s in final.stages] == ["finished"] * 5
    out = tmp_path / "run"
    match = json.loads((out / "stage_3_match" / "stage.json").read_text())
    fitted = match["match_target"]
    assert fitted["probability"] == 0.5 and fitted["target_images"] == 40
    assert fitted["blur"] > 0 and fitted["noise"] > 0 and fitted["gain"] < 1  # the prepared shift's direction
    assert match["stage_config"]["augmentation"]["match_target"] == 0.5
    adabn = json.loads((out / "stage_4_adabn" / "stage.json").read_text())
    assert adabn["global_steps"] == 0 and adabn["adabn"]["target_images"] == 40
    assert adabn["started_from"] == "stage_3_match" and "eval_accuracy" in adabn["metrics"]
    from safetensors.torch import load_file

    a = load_file(out / "stage_3_match" / "model.safetensors")
    b = load_file(out / "stage_4_adabn" / "model.safetensors")
    stats = [k for k in a if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert stats and all(torch.equal(a[k], b[k]) for k in a if k not in stats)
    assert any(not torch.equal(a[k], b[k]) for k in stats)
    c = load_file(out / "stage_5_pseudo" / "model.safetensors")
    assert all(torch.equal(b[k], c[k]) for k in stats)  # freeze_batchnorm: the target statistics stayed
    assert any(not torch.equal(b[k], c[k]) for k in b if k not in stats)  # while the weights trained
    pseudo = json.loads((out / "stage_5_pseudo" / "stage.json").read_text())
    assert pseudo["pseudo_labels"]["candidates"] == 40 and pseudo["started_from"] == "stage_4_adabn"


def test_domain_adaptation_options_are_checked(shifted_data, pair_data, tmp_path):
    def recipe(stages, task="image_classification", unlabeled="target", data=shifted_data, model=TINY_TIMM):
        body = {"task": task, "output_dir": str(tmp_path / "run"), "report_to": ["none"],
                "data": {"path": str(data), "train_file": "train", "eval_file": "val", "test_file": None,
                         **({"unlabeled_file": unlabeled} if unlabeled else {})},
                "model": model, "stages": stages}
        path = tmp_path / "r.yaml"
        path.write_text(yaml.safe_dump(body))
        return load_config(path)

    from hfstage.preflight import check_stages
    from hfstage.tasks import TASKS

    def check(cfg):
        check_stages(cfg, TASKS.get(cfg.task, "task")(), build_model(cfg.model, num_labels=10))

    with pytest.raises(ConfigError, match=r"stages.1.kind: .adapt. must be train or adabn"):
        recipe([{"name": "a", "kind": "adapt"}])
    with pytest.raises(ConfigError, match=r"augmentation.match_target: 2.0 must be in \[0, 1\]"):
        check(recipe([{"name": "a", "augmentation": {"match_target": 2}}]))
    with pytest.raises(ConfigError, match="set data.unlabeled_file"):
        check(recipe([{"name": "a", "augmentation": {"match_target": True}}], unlabeled=None))
    with pytest.raises(ConfigError, match=r"stages.1 \(a\).augmentation: a kind: adabn stage takes no gradient steps"):
        check(recipe([{"name": "a", "kind": "adabn", "augmentation": {"crop": 0.8}}]))
    with pytest.raises(ConfigError, match="domain adaptation stages are for image_classification"):
        check(recipe([{"name": "a", "kind": "adabn"}], task="pair_classification", data=pair_data,
                     model={"type": "pair_cnn"}))
    with pytest.raises(ConfigError, match="kind: adabn acts on BatchNorm statistics, and this model has no BatchNorm layer"):
        check(recipe([{"name": "a", "kind": "adabn"}], model={"type": "timm", "backbone": "test_vit",
                                                               "image_size": 32}))
    assert recipe([{"name": "a", "augmentation": {"match_target": True, "crop": 0.8}}]).stages[0].augmentation == {
        "match_target": 1.0, "crop": 0.8}
