"""Data through 🤗 datasets (pairs and sequences): hfstage's .npz files converted once into the datasets cache
and memory-mapped, save_to_disk folders, parquet and json-lines folders, data.columns, and their errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import yaml
from conftest import TINY_MODEL, write_recipe

from hfstage.cli import main
from hfstage.config import DataConfig
from hfstage.tasks import TASKS


def pair_arrays(folder, split: str):
    z = np.load(folder / {"train": "train.npz", "validation": "val.npz", "test": "test_public.npz"}[split])
    return z["x"], z["y"]


def test_npz_is_converted_once_and_then_memory_mapped(pair_data):
    import datasets

    task = TASKS.get("pair_classification")()
    splits = task.load_splits(DataConfig(path=str(pair_data)))
    from hfstage.checkpoint import fingerprint

    # train, val, test: one cache entry each, named by the SHA-256 of the file's bytes
    entries = [datasets.config.HF_DATASETS_CACHE / "hfstage" / f"pairs-v1-{fingerprint(pair_data / name)[:32]}"
               for name in ("train.npz", "val.npz", "test_public.npz")]
    assert all((e / "state.json").is_file() for e in entries)
    stamps = [(e / "state.json").stat().st_mtime_ns for e in entries]
    again = TASKS.get("pair_classification")().load_splits(DataConfig(path=str(pair_data)))
    assert [(e / "state.json").stat().st_mtime_ns for e in entries] == stamps  # not converted again
    view = again.train.images.raw.views[0]
    assert not view.flags.owndata and not view.flags.writeable  # a view of the memory-mapped Arrow file
    x, y = pair_arrays(pair_data, "train")
    batch = again.train.__getitems__([5, 0, 300])
    assert np.array_equal(batch["pixel_values"].numpy(), x[[5, 0, 300]]) and batch["labels"].tolist() == y[[5, 0, 300]].tolist()
    assert splits.train.image_size == (28, 28) and len(splits.eval) == 160


def data_recipe(path, data_fields: dict, output_dir, stages):
    """A small pair recipe whose ``data:`` block is ``data_fields``."""
    write_recipe(path, data_fields["path"], output_dir, stages)
    recipe = yaml.safe_load(path.read_text())
    recipe["data"] = data_fields
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def write_parquet_pairs(folder, pair_data, splits=("train", "validation")):
    """The same pairs as parquet files with the user's own column names: left/right images, is_same."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir()
    for split in splits:
        x, y = pair_arrays(pair_data, split)
        table = pa.table({"left": x[:, 0].tolist(), "right": x[:, 1].tolist(), "is_same": y.astype(bool)})
        pq.write_table(table, folder / f"{split}-00000-of-00001.parquet")
    return folder


def test_a_parquet_folder_with_its_own_column_names_trains_and_evaluates(pair_data, tmp_path, capsys):
    data = write_parquet_pairs(tmp_path / "parquet", pair_data)
    path = data_recipe(tmp_path / "r.yaml", {"path": str(data), "columns": {"image_a": "left", "image_b": "right", "label": "is_same"}}, tmp_path / "run",
                       [{"name": "only", "epochs": 1}])
    assert main(["train", "--config", str(path)]) == 0
    record = json.loads((tmp_path / "run/stage_1_only/stage.json").read_text())
    assert record["test_metrics"] == {}  # the folder has no test split: none is reported
    assert main(["evaluate", str(tmp_path / "run"), "--split", "val"]) == 0
    result = json.loads((tmp_path / "run/stage_1_only/eval/val.json").read_text())
    assert result["metrics"]["accuracy"] == pytest.approx(record["metrics"]["eval_accuracy"], abs=1e-9)
    assert "[split validation]" in result["data_file"] and result["samples"] == 160


def test_npz_and_the_same_pairs_saved_with_datasets_train_to_the_same_weights(pair_data, tmp_path):
    """The Arrow path is the npz path: same batches, same order, same metrics to the last digit."""
    import datasets

    features = datasets.Features({"pair": datasets.Array3D((2, 28, 28), "uint8"), "label": datasets.Value("int64")})
    splits = {}
    for split in ("train", "validation", "test"):
        x, y = pair_arrays(pair_data, split)
        splits[split] = datasets.Dataset.from_dict({"pair": x, "label": y}, features=features)
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "saved"))
    metrics = []
    for name, data in (("npz", pair_data), ("saved", tmp_path / "saved")):
        path = write_recipe(tmp_path / f"{name}.yaml", data, tmp_path / name, [{"name": "only", "epochs": 1}])
        assert main(["train", "--config", str(path)]) == 0
        record = json.loads((tmp_path / name / "stage_1_only/stage.json").read_text())
        metrics.append({k: v for part in ("metrics", "test_metrics") for k, v in record[part].items()
                        if "runtime" not in k and "per_second" not in k})
    assert metrics[0] == metrics[1]


@pytest.mark.parametrize("columns, message", [
    ({"image_a": "left", "image_b": "right", "label": "same"}, "no column 'same' for label (data.columns.label); its columns: left, right, is_same"),
    ({"image_a": "left", "image_b": "right"}, "no column 'label' for label (the default; map it with data.columns.label)"),
    ({"pair": "left", "label": "is_same"}, "column 'left' must hold 2 x H x W images per row, got rows of shape (28, 28)"),
])
def test_column_errors_name_the_split_the_field_and_the_columns(pair_data, tmp_path, capsys, columns, message):
    data = write_parquet_pairs(tmp_path / "parquet", pair_data, splits=("train",))
    path = data_recipe(tmp_path / "r.yaml", {"path": str(data), "columns": columns}, tmp_path / "run",
                       [{"name": "only", "epochs": 1}])
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{data} [split train] (data.train_file): {message}" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_a_missing_split_and_bad_labels_are_refused(pair_data, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = write_parquet_pairs(tmp_path / "parquet", pair_data, splits=("train",))
    path = data_recipe(tmp_path / "r.yaml", {"path": str(data), "columns": {"image_a": "left", "image_b": "right", "label": "is_same"}}, tmp_path / "run",
                       [{"name": "only", "epochs": 1}])
    assert main(["train", "--config", str(path)]) == 2
    assert "no split 'validation' (data.eval_file); its splits: train" in capsys.readouterr().err
    for split in ("train", "validation"):  # integer labels this time, one of them 3
        x, y = pair_arrays(pair_data, split)
        y = y.copy()
        y[7] = 3 if split == "validation" else y[7]
        pq.write_table(pa.table({"left": x[:, 0].tolist(), "right": x[:, 1].tolist(), "is_same": y}),
                       data / f"{split}-00000-of-00001.parquet")
    assert main(["train", "--config", str(path)]) == 2
    assert "column 'is_same' must be 0 or 1; sample 7 has 3" in capsys.readouterr().err


def test_sequences_of_any_length_with_string_labels_from_json_lines(tmp_path, capsys):
    """Ragged clips (a list of frames per row) and class names as labels; evaluation maps the names with the
    trained model's classes."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "clips"
    folder.mkdir()
    for split, n in (("train", 60), ("validation", 30), ("test", 30)):
        with open(folder / f"{split}.jsonl", "w") as fh:
            for _ in range(n):
                label = int(rng.integers(0, 3))
                frames = rng.normal(2 * label, 0.3, size=(int(rng.integers(4, 12)), 5)).round(4).tolist()
                fh.write(json.dumps({"clip": frames, "word": ["yes", "no", "maybe"][label]}) + "\n")
    recipe = {"task": "sequence_classification", "output_dir": str(tmp_path / "run"), "report_to": ["none"],
              "data": {"path": str(folder), "columns": {"features": "clip", "label": "word"}},
              "model": {"type": "sequence", "arch": "gru", "hidden_dim": 16},
              "stages": [{"name": "only", "epochs": 10, "lr": 0.01, "batch_size": 16}]}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["train", "--config", str(path)]) == 0
    record = json.loads((tmp_path / "run/stage_1_only/stage.json").read_text())
    assert record["metrics"]["eval_accuracy"] > 0.8  # three well-separated classes
    config = json.loads((tmp_path / "run/stage_1_only/config.json").read_text())
    assert config["id2label"] == {"0": "maybe", "1": "no", "2": "yes"}  # the names, sorted
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "run"), "--split", "test", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["metrics"]["accuracy"] == pytest.approx(record["test_metrics"]["test_accuracy"], abs=1e-9)


def test_tiny_model_is_what_the_recipes_use():
    assert TINY_MODEL["type"] == "pair_cnn"


def test_a_dataset_on_the_hub_trains_and_is_cached(pair_data, tmp_path, hub, monkeypatch, capsys):
    """``data.path: hf://datasets/OWNER/NAME``, from the local Hub server, through the Hub client and its cache."""
    from huggingface_hub import HfApi

    folder = write_parquet_pairs(tmp_path / "parquet", pair_data)
    api = HfApi()
    api.create_repo("tester/pairs", repo_type="dataset")
    api.upload_folder(repo_id="tester/pairs", repo_type="dataset", folder_path=str(folder), path_in_repo="data")
    path = data_recipe(tmp_path / "r.yaml", {"path": "hf://datasets/tester/pairs",
                                             "columns": {"image_a": "left", "image_b": "right", "label": "is_same"}},
                       tmp_path / "run", [{"name": "only", "epochs": 1}])
    assert main(["train", "--config", str(path)]) == 0
    record = json.loads((tmp_path / "run/stage_1_only/stage.json").read_text())
    assert record["data"]["path"] == "hf://datasets/tester/pairs" and "eval_accuracy" in record["metrics"]
    assert main(["train", "--config", str(path), "output_dir=" + str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again/stage_1_only/stage.json").read_text())
    assert again["train_data_sha256"] == record["train_data_sha256"]


def test_python_api_trains_on_datasets_passed_in(pair_data, tmp_path):
    """``hfstage.train(recipe, train_dataset=..., eval_dataset=...)``: datasets.Dataset objects, no data.path."""
    import datasets

    import hfstage
    from hfstage.errors import ConfigError

    def split(name):
        x, y = pair_arrays(pair_data, name)
        return datasets.Dataset.from_dict({"a": list(x[:, 0]), "b": list(x[:, 1]), "same": y})

    path = write_recipe(tmp_path / "r.yaml", pair_data, tmp_path / "run", [{"name": "only", "epochs": 1}])
    final = hfstage.train(path, train_dataset=split("train"), eval_dataset=split("validation"),
                          overrides=["data.columns={image_a: a, image_b: b, label: same}"])
    assert final.status == "finished"
    record = json.loads((tmp_path / "run/stage_1_only/stage.json").read_text())
    assert record["data"]["path"] == "<datasets passed to hfstage.train>" and len(record["train_data_sha256"]) == 64
    assert record["test_metrics"] == {} and "eval_accuracy" in record["metrics"]
    with pytest.raises(ConfigError, match="give train_dataset and eval_dataset together"):
        hfstage.train(path, train_dataset=split("train"))


def test_which_folders_are_datasets_sources(tmp_path, pair_data):
    from hfstage.data.sources import source_kind

    def kind(folder, **fields):
        return source_kind(DataConfig(path=str(folder), **fields))

    assert kind(pair_data) is None  # train.npz: hfstage's own files
    assert kind("hf://datasets/owner/name@v1") == "hub"
    images = tmp_path / "images"
    (images / "train" / "cat").mkdir(parents=True)
    (images / "train" / "cat" / "a.png").write_bytes(b"")
    assert kind(images, train_file="train") is None  # a folder of class folders
    shards = write_parquet_pairs(tmp_path / "shards", pair_data, splits=("train",))
    (shards / "train").mkdir()
    os.replace(shards / "train-00000-of-00001.parquet", shards / "train" / "part-0.parquet")
    assert kind(shards, train_file="train") == "files"  # split folders of parquet shards
    import datasets

    datasets.Dataset.from_dict({"label": [0, 1]}).save_to_disk(str(tmp_path / "saved"))
    assert kind(tmp_path / "saved") == "disk"
