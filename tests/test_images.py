"""Image classification with timm on real MNIST digits written as PNG files."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from hfstage.config import load_config
from hfstage.curriculum import run
from hfstage.data.images import load_image_list
from hfstage.errors import ConfigError, DataError
from hfstage.evaluation import evaluate_checkpoint
from hfstage.models import build_model
from hfstage.resolve import load_stage_model

TINY_TIMM = {"type": "timm", "backbone": "test_efficientnet", "image_size": 32}


@pytest.fixture(scope="session")
def image_data(tmp_path_factory) -> Path:
    from hfstage.data.prepare import prepare_mnist_images

    out = tmp_path_factory.mktemp("mnist_images")
    prepare_mnist_images(out, seed=0, train_images=160, val_images=60, test_images=50)
    return out


def image_recipe(path: Path, data: Path, output_dir: Path, stages=None, **fields) -> Path:
    recipe = {
        "task": "image_classification",
        "output_dir": str(output_dir),
        "seed": 0,
        "data": {"path": str(data), "train_file": "train", "eval_file": "val", "test_file": "test"},
        "model": dict(TINY_TIMM),
        "report_to": ["none"],
        "metric_for_best_model": "eval_accuracy",
        "improvement_threshold": -1,
        "defaults": {"batch_size": 32, "eval_batch_size": 64, "lr": 3e-3},
        "stages": stages or [
            {"name": "warmup", "epochs": 1, "freeze_patterns": ["backbone.*"]},
            {"name": "finetune", "epochs": 1, "augmentation": {"crop": 0.8, "hflip": 0.0, "rand_augment": 3}},
        ],
    }
    recipe.update(fields)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def test_prepare_writes_class_folders_and_an_unlabelled_test_set(image_data):
    train = load_image_list(image_data / "train", "data.train_file")
    assert len(train.paths) == 160 and train.classes == [str(d) for d in range(10)]
    assert sorted(set(train.labels.tolist())) == list(range(10))
    assert all(Path(p).parent.name == train.classes[y] for p, y in zip(train.paths, train.labels))
    test_images = sorted((image_data / "test_images").glob("*.png"))
    rows = (image_data / "test_labels.csv").read_text().splitlines()
    assert len(test_images) == 50 and rows[0] == "id,label" and len(rows) == 51
    assert {p.stem for p in test_images} == {r.split(",")[0] for r in rows[1:]}


def test_two_stage_run_head_only_then_full_and_reload(image_data, tmp_path):
    final = run(load_config(image_recipe(tmp_path / "r.yaml", image_data, tmp_path / "run")))
    out = tmp_path / "run"
    warm = json.loads((out / "stage_1_warmup" / "stage.json").read_text())
    model = load_stage_model(out / "stage_1_warmup")
    head = sum(p.numel() for n, p in model.named_parameters() if n.startswith("head."))
    assert warm["frozen_parameters"] == warm["total_parameters"] - head  # only the head trained
    cfg = json.loads((out / "stage_1_warmup" / "config.json").read_text())  # transformers' own timm format
    assert cfg["model_type"] == "timm_wrapper" and cfg["label_names"][3] == "3"
    assert cfg["hfstage_timm"]["image_size"] == 32 and cfg["pretrained_cfg"]["input_size"] == [3, 32, 32]
    assert type(model) is type(build_model(TINY_TIMM, num_labels=10))
    assert final.stages[1].status == "finished"
    result = evaluate_checkpoint(out, split="test", save_predictions=True)
    assert result["samples"] == 50 and 0 <= result["metrics"]["accuracy"] <= 1
    rows = (out / final.best_stage_dir / "eval" / "test_predictions.csv").read_text().splitlines()
    assert rows[0].startswith("id,label,prediction,probability,p_0") and len(rows) == 51


def test_frozen_backbone_does_not_change(image_data, tmp_path):
    stages = [{"name": "a", "epochs": 1}, {"name": "head", "epochs": 1, "freeze_patterns": ["backbone.*"]},
              {"name": "keep", "epochs": 1, "freeze_patterns": ["backbone.*", "!backbone.conv_head.*"]}]
    run(load_config(image_recipe(tmp_path / "r.yaml", image_data, tmp_path / "run", stages)))
    a, head, keep = (load_stage_model(tmp_path / "run" / d).state_dict()
                     for d in ("stage_1_a", "stage_2_head", "stage_3_keep"))
    for k in a:
        if k.startswith("backbone."):  # weights and BatchNorm statistics alike
            assert torch.equal(a[k], head[k]), k
    assert not torch.equal(a["head.weight"], head["head.weight"])
    assert not torch.equal(head["backbone.conv_head.weight"], keep["backbone.conv_head.weight"])
    assert torch.equal(head["backbone.conv_stem.weight"], keep["backbone.conv_stem.weight"])


def test_bad_images_and_csv_rows(image_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(image_data / "train", data / "train")
    broken = sorted((data / "train" / "4").glob("*.png"))[0]
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match=f"{broken}: not a readable image .*data.train_file.*skip_bad_images"):
        load_image_list(data / "train", "data.train_file")
    kept = load_image_list(data / "train", "data.train_file", skip_bad=True)
    assert len(kept.paths) == 159 and kept.skipped == 1 and str(broken) not in kept.paths

    good = sorted((image_data / "val" / "7").glob("*.png"))[0]
    cases = {
        "file,label\nx.png,1\n": "no column 'path' for image \\(the default; map it with data.columns.image\\); its columns: file, label",
        f"path,label\n{good},\n": "line 2: empty 'label'",
        "path,label\nmissing.png,3\n": "line 2: image missing.png not found",
        f"path,label\n{good},7\n{good},cat\n": "class 'cat' is not one of the training split's classes",
        "path,label\n": "no rows",
    }
    for i, (text, message) in enumerate(cases.items()):
        csv = tmp_path / f"split{i}.csv"
        csv.write_text(text)
        with pytest.raises(DataError, match=f"{csv}: .*{message}"):
            load_image_list(csv, "data.eval_file", classes=[str(d) for d in range(10)])
    ok = tmp_path / "ok.csv"
    ok.write_text(f"path,label\n{good},7\n")
    assert load_image_list(ok, "data.eval_file", classes=[str(d) for d in range(10)]).labels.tolist() == [7]
    # hfstage's own CSV with other column names, mapped by data.columns
    named = tmp_path / "named.csv"
    named.write_text(f"file,digit\n{good},7\n")
    mapped = load_image_list(named, "data.eval_file", classes=[str(d) for d in range(10)],
                             columns={"image": "file", "label": "digit"})
    assert mapped.labels.tolist() == [7] and mapped.paths == [str(good)]
    (tmp_path / "empty" / "0").mkdir(parents=True)
    with pytest.raises(DataError, match="empty: no image files"):
        load_image_list(tmp_path / "empty", "data.train_file")


def test_config_errors(image_data, tmp_path):
    bad_aug = [{"name": "a", "epochs": 1, "augmentation": {"rand_augmnet": 3}}]
    with pytest.raises(ConfigError, match="augmentation.*rand_augmnet.*rand_augment"):
        run(load_config(image_recipe(tmp_path / "a.yaml", image_data, tmp_path / "a", bad_aug)))
    with pytest.raises(ConfigError, match="model.*backbone 'resnet_18' is not a timm model.*resnet18"):
        run(load_config(image_recipe(tmp_path / "b.yaml", image_data, tmp_path / "b",
                                     model={"type": "timm", "backbone": "resnet_18"})))
    began = time.time()
    with pytest.raises(ConfigError, match="model.pretrained"):
        run(load_config(image_recipe(tmp_path / "c.yaml", image_data, tmp_path / "c",
                                     model={**TINY_TIMM, "pretrained": True})))
    assert time.time() - began < 30  # a clear error, not a minute of download retries
    assert not (tmp_path / "c" / "stage_1_warmup").exists()


def test_pseudo_label_stage_adds_exactly_the_confident_images(image_data, tmp_path):
    from hfstage.pseudo import predict_probabilities
    from hfstage.tasks import TASKS

    stages = [{"name": "base", "epochs": 2, "lr": 5e-3},
              {"name": "pseudo", "epochs": 1, "pseudo_labels": True, "pseudo_threshold": 0.3}]
    path = image_recipe(tmp_path / "r.yaml", image_data, tmp_path / "run", stages)
    raw = yaml.safe_load(path.read_text())
    raw["data"]["unlabeled_file"] = "test_images"
    path.write_text(yaml.safe_dump(raw))
    run(load_config(path))
    record = json.loads((tmp_path / "run" / "stage_2_pseudo" / "stage.json").read_text())["pseudo_labels"]
    task = TASKS.get("image_classification")()
    task.bind(load_stage_model(tmp_path / "run" / "stage_1_base").config)
    unlabeled = task.load_unlabeled(image_data / "test_images", "data.unlabeled_file")
    probs = predict_probabilities(task, load_stage_model(tmp_path / "run" / "stage_1_base"), unlabeled, 64)
    expected = int((probs.max(axis=1) >= 0.3).sum())
    assert record["candidates"] == 50 and record["added"] == expected and record["threshold"] == 0.3
    assert sum(record["per_class"].values()) == expected
    stage2 = json.loads((tmp_path / "run" / "stage_2_pseudo" / "stage.json").read_text())
    assert stage2["train_samples_per_second"] > 0
    with pytest.raises(ConfigError, match="pseudo_labels: set data.unlabeled_file"):
        run(load_config(image_recipe(tmp_path / "b.yaml", image_data, tmp_path / "b", stages)))


def test_two_folds_then_a_submission_with_tta(image_data, tmp_path, capsys):
    from hfstage import cli
    from hfstage.sweeps import run_seeds
    from hfstage.predict import TTA_VIEWS, tta_view

    path = image_recipe(tmp_path / "r.yaml", image_data, tmp_path / "run", [{"name": "base", "epochs": 1}], folds=2)
    run_seeds(load_config(path))
    out = tmp_path / "run"
    assert (out / "fold_0").is_dir() and (out / "fold_1").is_dir()
    oof, ids = np.load(out / "oof.npy"), np.load(out / "oof_ids.npy")
    assert oof.shape == (160, 10) and np.allclose(oof.sum(axis=1), 1, atol=1e-4) and len(set(ids.tolist())) == 160
    sub = tmp_path / "sub" / "submission.csv"
    assert cli.main(["predict", str(out), "--images", str(image_data / "test_images"), "--out", str(sub), "--proba"]) == 0
    rows = sub.read_text().splitlines()
    expected = sorted(p.stem for p in (image_data / "test_images").glob("*.png"))
    assert rows[0] == "id,label," + ",".join(f"p_{c}" for c in range(10))
    assert sorted(r.split(",")[0] for r in rows[1:]) == expected
    assert all(r.split(",")[1] in [str(c) for c in range(10)] for r in rows[1:])
    final = json.loads((tmp_path / "sub" / "final_results.json").read_text())
    assert final["models"] == [str(out / "fold_0"), str(out / "fold_1")] and str(out) in final["cv"]
    # --tta 1 is the plain prediction; more views change the probabilities but keep the rows
    plain = tmp_path / "plain.csv"
    assert cli.main(["predict", str(out / "fold_0"), "--images", str(image_data / "test_images"), "--out", str(plain),
                     "--proba", "--tta", "1"]) == 0
    from hfstage.evaluation import resolve_checkpoint
    from hfstage.pseudo import predict_probabilities
    from hfstage.tasks import TASKS

    task = TASKS.get("image_classification")()
    model = load_stage_model(resolve_checkpoint(out / "fold_0").stage_dir)
    task.bind(model.config)
    direct = predict_probabilities(task, model, task.load_unlabeled(image_data / "test_images", "x"), 64)
    got = np.array([[float(v) for v in r.split(",")[2:]] for r in plain.read_text().splitlines()[1:]])
    np.testing.assert_allclose(got, direct, atol=2e-6)
    tta = tmp_path / "tta.csv"
    assert cli.main(["predict", str(out / "fold_0"), "--images", str(image_data / "test_images"), "--out", str(tta),
                     "--proba", "--tta", "8"]) == 0
    assert len(tta.read_text().splitlines()) == 51 and tta.read_text() != plain.read_text()
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    assert torch.equal(tta_view(x, "identity"), x) and torch.equal(tta_view(x, "hflip"), x.flip(-1))
    assert all(tta_view(x, v).shape == x.shape for v in TTA_VIEWS)
    assert torch.equal(tta_view(x, "shift_right")[..., 1:], x[..., :-1])
    capsys.readouterr()
    assert cli.main(["predict", str(out), "--images", str(image_data / "test_images"), "--out", str(tta),
                     "--tta", "9"]) == 2
    assert "--tta 9: must be 1 to 8" in capsys.readouterr().err


def test_arcface_stage_and_mixup_stage_train(image_data, tmp_path):
    stages = [{"name": "arc", "epochs": 1, "loss": {"type": "arcface", "margin": 0.3}},
              {"name": "mix", "epochs": 1, "augmentation": {"mixup": 0.4, "cutmix": 1.0}, "batch_size": 31}]
    final = run(load_config(image_recipe(tmp_path / "r.yaml", image_data, tmp_path / "run", stages,
                                         model={**TINY_TIMM, "head": "cosine", "cosine_scale": 16})))
    assert [s.status for s in final.stages] == ["finished", "finished"]
    record = json.loads((tmp_path / "run" / "stage_1_arc" / "stage.json").read_text())
    assert record["stage_config"]["loss"] == {"type": "arcface", "margin": 0.3} and np.isfinite(record["metrics"]["eval_loss"])
    with pytest.raises(ConfigError, match="stages.1 \\(a\\).loss: loss arcface needs a cosine classifier"):
        run(load_config(image_recipe(tmp_path / "b.yaml", image_data, tmp_path / "b",
                                     [{"name": "a", "epochs": 1, "loss": "arcface"}])))
    with pytest.raises(ConfigError, match="augmentation.mixup: mixed \\(soft\\) labels need loss cross_entropy, not focal"):
        run(load_config(image_recipe(tmp_path / "c.yaml", image_data, tmp_path / "c",
                                     [{"name": "a", "epochs": 1, "loss": "focal", "augmentation": {"mixup": 0.2}}])))


def test_mixup_collator_mixes_pairs_and_keeps_an_odd_sample_one_hot():
    from PIL import Image

    from hfstage.data.images import ImageCollator, image_transform
    from hfstage.models import build_model

    config = build_model(TINY_TIMM, num_labels=4).config
    collate = ImageCollator(image_transform(config, True, {"mixup": 1.0}), {"mixup": 1.0}, 4)
    images = [{"image": Image.new("RGB", (28, 28), (40 * i, 0, 0)), "labels": i} for i in range(3)]
    batch = collate(images)
    assert batch["labels"].shape == (3, 4) and torch.allclose(batch["labels"].sum(1), torch.ones(3))
    assert torch.equal(batch["labels"][2], torch.tensor([0.0, 0.0, 1.0, 0.0]))
    assert batch["labels"][0, 0] < 1 and batch["labels"][0, 1] > 0  # the first two were blended together


def test_class_wise_augmentation_strength(image_data, tmp_path):
    from PIL import Image

    from hfstage.data.images import scaled_augmentation
    from hfstage.tasks import TASKS

    aug = {"hflip": 0.5, "crop": 0.8, "rand_augment": 5, "mixup": 0.2}
    assert scaled_augmentation(aug, 2.0) == {"hflip": 1.0, "crop": pytest.approx(0.6), "rand_augment": 9}
    assert scaled_augmentation(aug, 0.0) == {"hflip": 0.0, "crop": 1.0, "rand_augment": 0.0}
    task = TASKS.get("image_classification")()
    model = build_model(TINY_TIMM, num_labels=3, id2label={0: "a", 1: "b", 2: "c"}, label2id={"a": 0, "b": 1, "c": 2})
    stage = load_config(image_recipe(tmp_path / "r.yaml", image_data, tmp_path / "run", [
        {"name": "s", "augmentation": {"hflip": 1.0}, "class_augmentation": {"b": 0.0}}])).stages[0]
    collate = task.collator(stage, training=True, model_config=model.config)
    # an asymmetric image: class b (factor 0) is never flipped, class a (hflip 1.0) always is
    img = Image.new("RGB", (32, 32))
    img.paste((255, 255, 255), (0, 0, 8, 32))
    batch = collate([{"image": img, "labels": 0}, {"image": img, "labels": 1}])
    left, right = batch["pixel_values"][:, 0, 16, :4].mean(1), batch["pixel_values"][:, 0, 16, -4:].mean(1)
    assert right[0] > left[0] and left[1] > right[1]
    stage.class_augmentation = {"bee": 2.0}
    with pytest.raises(ConfigError, match="class_augmentation: 'bee' is not a class.*b"):
        task.collator(stage, training=True, model_config=model.config)
    bad = [{"name": "s", "epochs": 1, "augmentation": {"hflip": 0.5}, "class_augmentation": {"eleven": 2.0}}]
    with pytest.raises(ConfigError, match="stages.1 \\(s\\).class_augmentation: 'eleven' is not a class"):
        run(load_config(image_recipe(tmp_path / "b.yaml", image_data, tmp_path / "b", bad)))


def test_class_wise_augmentation_is_for_images_only(pair_data, tmp_path):
    from conftest import write_recipe

    path = write_recipe(tmp_path / "r.yaml", pair_data, tmp_path / "run",
                        [{"name": "a", "epochs": 1, "class_augmentation": {"1": 2.0}}])
    with pytest.raises(ConfigError, match="class_augmentation: class-wise augmentation strength is for "
                                          "image_classification, not pair_classification"):
        run(load_config(path))


def test_images_from_parquet_with_their_own_columns_train_like_the_folders(image_data, tmp_path, capsys):
    """The same images as parquet files (an Image column of PNG bytes, class names as strings, the user's own
    column names) train to exactly the metrics of the class folders, and evaluate from the parquet split."""
    import datasets

    from hfstage import cli
    from hfstage.data.images import list_image_folder

    folder = tmp_path / "parquet"
    folder.mkdir()
    for split, name in (("train", "train"), ("val", "validation"), ("test", "test")):
        paths, labels, names = list_image_folder(image_data / split, "test")  # the order the folder path reads
        rows = {"img": [{"bytes": Path(p).read_bytes(), "path": Path(p).name} for p in paths],
                "digit": [names[i] for i in labels]}
        features = datasets.Features({"img": datasets.Image(), "digit": datasets.Value("string")})
        datasets.Dataset.from_dict(rows, features=features).to_parquet(str(folder / f"{name}-00000-of-00001.parquet"))
    stages = [{"name": "only", "epochs": 1}]
    native = image_recipe(tmp_path / "n.yaml", image_data, tmp_path / "native", stages)
    recipe = yaml.safe_load(image_recipe(tmp_path / "p.yaml", image_data, tmp_path / "parq", stages).read_text())
    recipe["data"] = {"path": str(folder), "columns": {"image": "img", "label": "digit"}, "test_file": "test"}
    parq = tmp_path / "p.yaml"
    parq.write_text(yaml.safe_dump(recipe))
    metrics = []
    for path, out in ((native, "native"), (parq, "parq")):
        assert cli.main(["train", "--config", str(path)]) == 0
        record = json.loads((tmp_path / out / "stage_1_only/stage.json").read_text())
        metrics.append({k: v for part in ("metrics", "test_metrics") for k, v in record[part].items()
                        if "runtime" not in k and "per_second" not in k})
    assert metrics[0] == metrics[1] and "test_accuracy" in metrics[1]
    capsys.readouterr()
    assert cli.main(["evaluate", str(tmp_path / "parq"), "--split", "test", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["metrics"]["accuracy"] == pytest.approx(metrics[1]["test_accuracy"], abs=1e-9)


def test_images_from_an_imagefolder_with_metadata(image_data, tmp_path):
    """An imagefolder-style folder (a sub-folder per split: images and a metadata.csv with file_name and a label
    column of the user's name) trains like the class folders."""
    import csv
    import yaml

    from hfstage import cli
    from hfstage.data.images import list_image_folder

    folder = tmp_path / "flat"
    for split in ("train", "val", "test"):
        (folder / split).mkdir(parents=True)
        paths, labels, names = list_image_folder(image_data / split, "test")
        with open(folder / split / "metadata.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["file_name", "digit"])
            for i, (p, label) in enumerate(zip(paths, labels)):
                shutil.copy(p, folder / split / f"{i:05d}.png")
                writer.writerow([f"{i:05d}.png", names[label]])
    stages = [{"name": "only", "epochs": 1}]
    native = image_recipe(tmp_path / "n.yaml", image_data, tmp_path / "native", stages)
    recipe = yaml.safe_load(image_recipe(tmp_path / "f.yaml", folder, tmp_path / "flat_run", stages).read_text())
    recipe["data"]["columns"] = {"label": "digit"}
    (tmp_path / "f.yaml").write_text(yaml.safe_dump(recipe))
    metrics = []
    for path, out in ((native, "native"), (tmp_path / "f.yaml", "flat_run")):
        assert cli.main(["train", "--config", str(path)]) == 0
        record = json.loads((tmp_path / out / "stage_1_only/stage.json").read_text())
        metrics.append({k: v for part in ("metrics", "test_metrics") for k, v in record[part].items()
                        if "runtime" not in k and "per_second" not in k})
    assert metrics[0] == metrics[1]


def test_python_api_trains_images_passed_in_as_datasets(image_data, tmp_path):
    import datasets

    import hfstage
    from hfstage.data.images import list_image_folder

    def split(name):
        paths, labels, names = list_image_folder(image_data / name, "test")
        return datasets.Dataset.from_dict({"image": paths, "label": [names[i] for i in labels]})

    path = image_recipe(tmp_path / "r.yaml", image_data, tmp_path / "run", [{"name": "only", "epochs": 1}])
    final = hfstage.train(path, train_dataset=split("train"), eval_dataset=split("val"), test_dataset=split("test"))
    record = json.loads((tmp_path / "run" / final.best_stage_dir / "stage.json").read_text())
    assert final.status == "finished" and "test_accuracy" in record["test_metrics"]
    assert len(json.loads((tmp_path / "run" / final.best_stage_dir / "config.json").read_text())["label_names"]) == 10


NATIVE_SCRIPT = r"""
import json, sys
from pathlib import Path
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline
import torch

stage, images = Path(sys.argv[1]), sorted(Path(sys.argv[2]).glob("*.png"))
model = AutoModelForImageClassification.from_pretrained(stage).eval()
processor = AutoImageProcessor.from_pretrained(stage)
with torch.no_grad():
    logits = model(**processor([Image.open(p).convert("RGB") for p in images], return_tensors="pt")).logits
by_model = [model.config.id2label[int(i)] for i in logits.argmax(-1)]
classify = pipeline("image-classification", model=str(stage))
by_pipeline = [out[0]["label"] for out in classify([str(p) for p in images])]
print(json.dumps({"ids": [p.stem for p in images], "model": by_model, "pipeline": by_pipeline,
                  "probs": logits.softmax(-1).tolist(),
                  "hfstage_imported": "hfstage" in sys.modules, "type": type(model).__name__}))
"""


def test_a_plain_head_stage_loads_natively_without_hfstage(image_data, tmp_path):
    import csv
    import subprocess
    import sys

    from hfstage import cli

    stages = [{"name": "base", "epochs": 2}]
    run(load_config(image_recipe(tmp_path / "r.yaml", image_data, tmp_path / "run", stages)))
    stage = tmp_path / "run" / "stage_1_base"
    sub = tmp_path / "sub.csv"
    assert cli.main(["predict", str(stage), "--images", str(image_data / "test_images"), "--out", str(sub),
                     "--proba"]) == 0
    rows = {r["id"]: r for r in csv.DictReader(sub.open())}
    ours = {i: r["label"] for i, r in rows.items()}
    script = tmp_path / "native.py"
    script.write_text(NATIVE_SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(stage), str(image_data / "test_images")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    native = json.loads(done.stdout.strip().splitlines()[-1])
    assert native["hfstage_imported"] is False and native["type"] == "TimmWrapperForImageClassification"
    assert len(native["ids"]) == 50
    assert native["model"] == [ours[i] for i in native["ids"]]  # the same top-1 for every image
    assert native["pipeline"] == native["model"]
    from huggingface_hub import ModelCard

    card = ModelCard.load(stage / "README.md")  # a card for transformers users: no hfstage needed
    assert card.data.pipeline_tag == "image-classification" and card.data.library_name == "transformers"
    assert "import hfstage" not in card.text and 'pipeline("image-classification"' in card.text
    from hfstage.export import export_stage

    assert export_stage(stage, "onnx", tmp_path / "onnx")["max_abs_difference"] <= 1e-4
    # and the same probabilities, not only the same winners: the same weights and the same preprocessing
    ours_probs = np.array([[float(rows[i][f"p_{c}"]) for c in range(10)] for i in native["ids"]])
    np.testing.assert_allclose(np.array(native["probs"]), ours_probs, atol=1e-5)


def test_a_stage_saved_by_an_older_hfstage_still_loads(image_data, tmp_path):
    model = build_model(TINY_TIMM, num_labels=10, id2label={i: str(i) for i in range(10)})
    model.save_pretrained(tmp_path / "old")  # the hfstage_timm format of earlier versions
    again = load_stage_model(tmp_path / "old")
    assert json.loads((tmp_path / "old" / "config.json").read_text())["model_type"] == "hfstage_timm"
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    cosine = build_model({**TINY_TIMM, "head": "cosine"}, num_labels=10)
    cosine.save_stage(tmp_path / "cosine")  # the cosine head has no native timm form: hfstage's own format
    assert json.loads((tmp_path / "cosine" / "config.json").read_text())["model_type"] == "hfstage_timm"


def test_a_cosine_head_stage_works_through_the_same_calls_after_import_hfstage(image_data, tmp_path):
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

    import hfstage  # noqa: F401  (registers hfstage_timm with the Auto classes)

    stages = [{"name": "arc", "epochs": 1, "loss": {"type": "arcface", "margin": 0.3}}]
    run(load_config(image_recipe(tmp_path / "r.yaml", image_data, tmp_path / "run", stages,
                                 model={**TINY_TIMM, "head": "cosine"})))
    stage = tmp_path / "run" / "stage_1_arc"
    assert json.loads((stage / "config.json").read_text())["model_type"] == "hfstage_timm"
    model = AutoModelForImageClassification.from_pretrained(stage).eval()
    processor = AutoImageProcessor.from_pretrained(stage)
    images = sorted((image_data / "test_images").glob("*.png"))[:6]
    with torch.no_grad():
        logits = model(**processor([Image.open(p).convert("RGB") for p in images], return_tensors="pt")).logits
    by_model = [model.config.id2label[int(i)] for i in logits.argmax(-1)]
    assert [r[0]["label"] for r in pipeline("image-classification", model=str(stage))([str(p) for p in images])] == by_model
