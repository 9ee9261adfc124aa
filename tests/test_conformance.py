"""The conformance matrix: every task x every representation its declared fields accept, each written to a source
kind that can hold it, trains a one-stage quick run through the real loaders and reaches the reference form's
metrics (equal on the CPU, since the decoded tensors are equal; ragged sequences are padded per batch instead of
to the split's length, so those runs must only finish with finite metrics). Error cells check the message.

The cells are generated from the task declarations (``Task.fields``) and ``hfstage.data.fields.FIELD_KINDS``: a
representation added there without a writer here fails ``test_every_declared_representation_has_a_writer``, and
the docs' per-task tables are checked against the same declarations.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ROOT, TINY_MODEL

from hfstage.cli import main
from hfstage.data.fields import FIELD_KINDS
from hfstage.tasks import TASKS

SPLITS = ("train", "validation", "test")
SIZES = {"train": 48, "validation": 24, "test": 24}


# --- reference data: small real sets, one per task, as plain Python values per field ---------------------------

def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def pair_reference(pair_data, rgb: bool = False) -> dict:
    """MNIST pairs; ``rgb``: tinted and cropped to 24 x 20, a colour set of another size."""
    out = {}
    for split, file in zip(SPLITS, ("train.npz", "val.npz", "test_public.npz")):
        z = np.load(pair_data / file)
        x, y = z["x"][: SIZES[split]], z["y"][: SIZES[split]]
        if rgb:
            tint = np.array([1.0, 0.6, 0.3])[None, None, :, None, None]
            x = (x[:, :, None, 2:26, 4:24] * tint).astype(np.uint8)  # (N, 2, 3, 24, 20)
        out[split] = {"image_a": list(x[:, 0]), "image_b": list(x[:, 1]), "label": y.astype(np.int64)}
    return out


def sequence_reference(sequence_data) -> dict:
    out = {}
    for split, file in zip(SPLITS, ("train.npz", "val.npz", "test_public.npz")):
        z = np.load(sequence_data / file)
        rows = np.linspace(0, len(z["y"]) - 1, SIZES[split]).astype(int)  # every class in every split
        out[split] = {"features": [x[:t] for x, t in zip(z["x"][rows], z["lengths"][rows])], "label": z["y"][rows],
                      "classes": [str(c) for c in z["classes"]], "padded": z["x"][rows], "lengths": z["lengths"][rows]}
    return out


def image_reference(pair_data) -> dict:
    """Single MNIST digits as 3-class images (the classes named 'a', 'b', 'c' by a digit's first pixel sum)."""
    out = {}
    for split, file in zip(SPLITS, ("train.npz", "val.npz", "test_public.npz")):
        x = np.load(pair_data / file)["x"][: SIZES[split], 0]
        y = (x.reshape(len(x), -1).sum(1) // 1000 % 3).astype(np.int64)
        y[:3] = [0, 1, 2]
        order = np.argsort(y, kind="stable")  # the order class folders list them in
        out[split] = {"image": list(x[order]), "label": y[order], "classes": ["a", "b", "c"]}
    return out


# --- writers: one per (field kind, representation) --------------------------------------------------------------

def _image_as(rep: str):
    def write(images: list[np.ndarray], folder: Path, split: str, field: str):
        """(column values, datasets feature or None)."""
        import datasets

        chw = [im if im.ndim == 3 else im[None] for im in images]  # (C, H, W)
        if rep == "Image feature (bytes)":
            return [{"bytes": _png(_hwc(im)), "path": None} for im in chw], datasets.Image()
        if rep in ("Image feature (path)", "path"):
            paths = []
            for i, im in enumerate(chw):
                file = folder / "files" / split / f"{field}_{i}.png"
                file.parent.mkdir(parents=True, exist_ok=True)
                file.write_bytes(_png(_hwc(im)))
                paths.append(str(file.relative_to(folder)) if rep == "path" else str(file))
            return ([{"bytes": None, "path": p} for p in paths], datasets.Image()) if rep != "path" else (paths, None)
        if rep == "uint8 array H x W":
            return [im[0] for im in chw] if chw[0].shape[0] == 1 else None, "array"
        if rep == "uint8 array H x W x C":
            return [im.transpose(1, 2, 0) for im in chw], "array"
        if rep == "uint8 array C x H x W":
            return chw, "array"
        if rep == "float array in [0, 1]":
            return [im.astype(np.float32) / np.float32(255) for im in chw], "array"
        if rep == "nested list":
            return [im.tolist() for im in chw], None
        raise AssertionError(rep)

    return write


def _hwc(im: np.ndarray) -> np.ndarray:
    return im[0] if im.shape[0] == 1 else im.transpose(1, 2, 0)


WRITERS = {
    "image": {rep: _image_as(rep) for rep in FIELD_KINDS["image"].accepts},
    "image_pair": {
        "uint8 array 2 x H x W": lambda a, b: [np.stack([x, y]) for x, y in zip(a, b)],
        "uint8 array 2 x H x W x C": lambda a, b: [np.stack([x, y])[..., None] for x, y in zip(a, b)],
        "uint8 array 2 x C x H x W": lambda a, b: [np.stack([x, y])[:, None] for x, y in zip(a, b)],
        "float array in [0, 1]": lambda a, b: [np.stack([x, y]).astype(np.float32) / np.float32(255) for x, y in zip(a, b)],
        "nested list": lambda a, b: [np.stack([x, y]).tolist() for x, y in zip(a, b)],
    },
    "binary_label": {
        "ClassLabel": lambda y: (y, "classlabel:different,same"),
        "int": lambda y: (y, None),
        "bool": lambda y: (y.astype(bool), None),
        "string": lambda y: (np.where(y == 1, "same", "different"), None),
    },
    "class_label": {
        "ClassLabel": lambda y, names: (y, "classlabel:" + ",".join(names)),
        "int": lambda y, names: (y, None),
        "string": lambda y, names: (np.asarray(names)[y], None),
    },
    "feature_sequence": {"Array2D": "padded", "list of lists (T x F)": "padded_lists", "ragged rows": "ragged"},
    "lengths": {"int": "lengths"},
    "phonemes": {"list of strings": lambda s: s.split(), "space-separated string": lambda s: s},
    "phoneme_labels": {"list of 0/1": lambda v: list(v), "string of 0/1": lambda v: " ".join(str(int(x)) for x in v)},
    "audio": {rep: rep for rep in FIELD_KINDS["audio"].accepts},
}


def test_every_declared_representation_has_a_writer():
    for name in TASKS.names():
        for field in TASKS.get(name).fields:
            assert set(WRITERS[field.kind]) == set(FIELD_KINDS[field.kind].accepts), (name, field.name)


def test_the_docs_tables_list_what_the_decoders_accept():
    """docs/tasks/<task>.md holds the task's field table, generated from the declarations (never hand-edited)."""
    from hfstage.data.fields import fields_table

    pages = {"pair_classification": "pairs", "sequence_classification": "sequences",
             "image_classification": "images", "speech_assessment": "speech"}
    for name in TASKS.names():
        text = (ROOT / "docs" / "tasks" / f"{pages[name]}.md").read_text()
        assert fields_table(TASKS.get(name)) in text, f"docs/tasks/{pages[name]}.md: regenerate the fields table"


# --- sources ------------------------------------------------------------------------------------------------------

def write_source(kind: str, folder: Path, splits: dict[str, dict], features: dict) -> str:
    """The splits (column -> values) as a ``kind`` source under ``folder``; returns data.path."""
    import datasets

    folder.mkdir(parents=True, exist_ok=True)
    sets = {}
    for split, cols in splits.items():
        if features:
            ds = datasets.Dataset.from_dict(dict(cols))
            cast = {}
            for name, kind_ in features.items():
                if isinstance(kind_, str) and kind_.startswith("classlabel:"):
                    cast[name] = datasets.ClassLabel(names=kind_.split(":", 1)[1].split(","))
                elif kind_ == "array":  # Array2D/3D/4D of the rows' shape
                    arr = np.stack(cols[name])
                    array_type = (datasets.Array2D, datasets.Array3D, datasets.Array4D)[arr.ndim - 3]
                    cast[name] = array_type(arr.shape[1:], str(arr.dtype))
                elif kind_ is not None:
                    cast[name] = kind_
            if cast:
                ds = ds.cast(datasets.Features({**ds.features, **cast}))
        else:
            ds = datasets.Dataset.from_dict(dict(cols))
        sets[split] = ds
    if kind == "save_to_disk":
        datasets.DatasetDict(sets).save_to_disk(str(folder))
    elif kind == "parquet":
        for split, ds in sets.items():
            ds.to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
    elif kind == "jsonl":
        for split, ds in sets.items():
            ds.to_json(str(folder / f"{split}.jsonl"))
    elif kind == "csv":
        for split, ds in sets.items():
            ds.to_csv(str(folder / f"{split}.csv"), index=False)
    else:
        raise AssertionError(kind)
    return str(folder)


def _detected(path: str, task: str, columns: dict) -> None:
    """hfstage auto reads the task kind from the same source, and the columns it maps are the ones the cell names."""
    from hfstage.automl.detect import detect

    found = detect(str(path))
    assert found.task == task, found.why
    assert all(columns.get(f, f) == c for f, c in found.data.get("columns", {}).items()), (found.data, columns)


def _train(tmp_path: Path, name: str, recipe: dict) -> dict:
    out = tmp_path / name
    recipe = {**recipe, "output_dir": str(out)}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    assert main(["train", "--config", str(path)]) == 0, name
    record = json.loads((out / "stage_1_only" / "stage.json").read_text())
    return {k: v for part in ("metrics", "test_metrics") for k, v in record[part].items()
            if "runtime" not in k and "per_second" not in k}


def _recipe(task: str, data: dict, model: dict, **extra) -> dict:
    return {"task": task, "seed": 0, "data": data, "model": model, "report_to": ["none"], "improvement_threshold": -1,
            "defaults": {"batch_size": 16, "eval_batch_size": 24, "lr": 3e-3},
            "stages": [{"name": "only", "epochs": 1}], **extra}


# --- pairs ----------------------------------------------------------------------------------------------------------

PAIR_SOURCES = ("parquet", "save_to_disk")


def _pair_cells():
    cells = []
    for i, rep in enumerate(FIELD_KINDS["image"].accepts):
        source = "csv" if rep == "path" else ("jsonl" if rep == "nested list" else PAIR_SOURCES[i % 2])
        cells.append(("image_a+image_b", rep, source))
    for i, rep in enumerate(FIELD_KINDS["image_pair"].accepts):
        cells.append(("pair", rep, "jsonl" if rep == "nested list" else PAIR_SOURCES[i % 2]))
    label_sources = {"ClassLabel": "save_to_disk", "int": "csv", "bool": "parquet", "string": "jsonl"}
    cells += [("label", rep, label_sources[rep]) for rep in FIELD_KINDS["binary_label"].accepts]
    return cells


def _pair_columns(ref: dict, field: str, rep: str, folder: Path, split: str, source: str = "parquet"):
    """(columns, features) of one split, with ``field`` in representation ``rep`` and the rest in a plain form."""
    a, b, y = ref["image_a"], ref["image_b"], ref["label"]
    features: dict = {}
    cols: dict = {}
    if field == "pair":
        cols["both"] = WRITERS["image_pair"][rep](a, b)
        if rep != "nested list":
            features["both"] = "array"
    else:
        for name, images in (("left", a), ("right", b)):
            plain = {"csv": "path", "jsonl": "nested list"}.get(source, "uint8 array H x W")  # what the source holds
            rep_ = rep if field == "image_a+image_b" else plain
            values, feature = WRITERS["image"][rep_](images, folder, split, name)
            cols[name] = values
            if feature is not None:
                features[name] = feature
    values, feature = WRITERS["binary_label"][rep if field == "label" else "int"](y)
    cols["same"] = list(values)
    if feature is not None:
        features["same"] = feature
    return cols, features


@pytest.fixture(scope="module")
def pair_reference_metrics(pair_data, tmp_path_factory):
    """The reference form: hfstage's own .npz files, cut to the matrix's sizes."""
    folder = tmp_path_factory.mktemp("pairs_ref")
    ref = pair_reference(pair_data)
    for split, file in zip(SPLITS, ("train.npz", "val.npz", "test_public.npz")):
        np.savez(folder / file, x=np.stack([np.stack([a, b]) for a, b in zip(ref[split]["image_a"], ref[split]["image_b"])]),
                 y=ref[split]["label"])
    _detected(folder, "pair_classification", {})
    return ref, _train(folder, "ref", _recipe("pair_classification", {"path": str(folder)}, TINY_MODEL))


@pytest.mark.parametrize("field, rep, source", _pair_cells())
def test_pairs_every_representation_reaches_the_reference_metrics(pair_reference_metrics, tmp_path, field, rep, source):
    ref, expected = pair_reference_metrics
    folder = tmp_path / "data"
    splits = {}
    feats = {}
    for split in SPLITS:
        splits[split], feats = _pair_columns(ref[split], field, rep, folder, split, source)
    path = write_source(source, folder, splits, feats)
    columns = {"pair": "both", "label": "same"} if field == "pair" else {"image_a": "left", "image_b": "right",
                                                                         "label": "same"}
    _detected(path, "pair_classification", columns)
    got = _train(tmp_path, "run", _recipe("pair_classification", {"path": path, "columns": columns}, TINY_MODEL))
    assert got == expected


def test_rgb_pairs_of_another_size_train_from_png_paths_in_csv_and_from_image_columns(pair_data, tmp_path):
    """Colour pairs (24 x 20, 3 channels) with model.in_channels: 3: PNG files named in a CSV, the same as Image
    columns in parquet, and as C x H x W arrays saved with datasets: the same metrics."""
    ref = pair_reference(pair_data, rgb=True)
    model = {**TINY_MODEL, "in_channels": 3}
    results = []
    for source, rep in (("save_to_disk", "uint8 array C x H x W"), ("csv", "path"), ("parquet", "Image feature (bytes)")):
        folder = tmp_path / f"data_{source}"
        splits, feats = {}, {}
        for split in SPLITS:
            splits[split], feats = _pair_columns(ref[split], "image_a+image_b", rep, folder, split, source)
        path = write_source(source, folder, splits, feats)
        results.append(_train(tmp_path, source, _recipe("pair_classification", {"path": path, "columns": {
            "image_a": "left", "image_b": "right", "label": "same"}}, model)))
        saved = json.loads((tmp_path / source / "stage_1_only" / "config.json").read_text())
        assert saved["in_channels"] == 3 and saved["image_size"] == [24, 20]
    assert results[0] == results[1] == results[2]
    assert main(["evaluate", str(tmp_path / "csv"), "--split", "test", "--save-predictions"]) == 0
    # the stage's pipeline takes colour images of any size and gives what evaluation gave for the same pair
    from PIL import Image
    from transformers import pipeline

    import hfstage  # noqa: F401  (registers the pipeline)

    classify = pipeline("pair-classification", model=str(tmp_path / "csv" / "stage_1_only"))
    a, b = (Image.fromarray(ref["test"][k][0].transpose(1, 2, 0)) for k in ("image_a", "image_b"))
    out = classify({"image_a": a, "image_b": b.resize((40, 48))})  # another size: resized as in training
    assert out["label"] in ("same", "different") and 0.5 <= out["score"] <= 1
    got = classify({"image_a": a, "image_b": b})
    first = (tmp_path / "csv" / "stage_1_only" / "eval" / "test_predictions.csv").read_text().splitlines()[1].split(",")
    same = float(first[3]) if first[2] == "1" else 1 - float(first[3])  # the probability of "same"
    assert (got["score"] if got["label"] == "same" else 1 - got["score"]) == pytest.approx(same, abs=1e-5)


# --- sequences --------------------------------------------------------------------------------------------------

SEQUENCE_MODEL = {"type": "sequence", "arch": "gru", "hidden_dim": 16, "num_layers": 1}


def _sequence_cells():
    cells = [("features", rep, src) for rep, src in zip(FIELD_KINDS["feature_sequence"].accepts,
                                                        ("save_to_disk", "jsonl", "parquet"))]
    cells += [("lengths", "int", "parquet")]
    cells += [("label", rep, src) for rep, src in zip(FIELD_KINDS["class_label"].accepts,
                                                     ("save_to_disk", "parquet", "jsonl"))]
    return cells


@pytest.fixture(scope="module")
def sequence_reference_metrics(sequence_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("seq_ref")
    ref = sequence_reference(sequence_data)
    for split, file in zip(SPLITS, ("train.npz", "val.npz", "test_public.npz")):
        r = ref[split]
        np.savez(folder / file, x=r["padded"], y=r["label"], lengths=r["lengths"], classes=np.asarray(r["classes"]))
    _detected(folder, "sequence_classification", {})
    return ref, _train(folder, "ref", _recipe("sequence_classification", {"path": str(folder)}, SEQUENCE_MODEL))


@pytest.mark.parametrize("field, rep, source", _sequence_cells())
def test_sequences_every_representation_reaches_the_reference_metrics(sequence_reference_metrics, tmp_path, field,
                                                                      rep, source):
    ref, expected = sequence_reference_metrics
    splits, feats = {}, {}
    for split in SPLITS:
        r = ref[split]
        form = (WRITERS["feature_sequence"][rep] if field == "features" else
                "padded_lists" if source == "jsonl" else "padded")  # JSON holds lists, not Array2D
        cols = {"frames": (list(r["padded"]) if form == "padded" else [x.tolist() for x in r["padded"]]
                           if form == "padded_lists" else [x.tolist() for x in r["features"]])}
        if form == "padded":
            feats["frames"] = "array"
        if form != "ragged":
            cols["n"] = list(r["lengths"])
        values, feature = WRITERS["class_label"][rep if field == "label" else "ClassLabel"](r["label"], r["classes"])
        cols["y"] = list(values)
        if feature is not None:
            feats["y"] = feature
        splits[split] = cols
    path = write_source(source, tmp_path / "data", splits, feats)
    columns = {"features": "frames", "label": "y", **({} if rep == "ragged rows" else {"lengths": "n"})}
    _detected(path, "sequence_classification", columns)
    got = _train(tmp_path, "run", _recipe("sequence_classification", {"path": path, "columns": columns},
                                          SEQUENCE_MODEL))
    if rep == "ragged rows":  # padded per batch, not to the split's length: same data, other padding
        assert set(got) == set(expected) and all(np.isfinite(v) for v in got.values())
    else:
        assert got == expected


# --- images -------------------------------------------------------------------------------------------------------

TINY_TIMM = {"type": "timm", "backbone": "test_efficientnet", "image_size": 32}


def _image_cells():
    cells = []
    for i, rep in enumerate(FIELD_KINDS["image"].accepts):
        source = "csv" if rep == "path" else ("jsonl" if rep == "nested list" else PAIR_SOURCES[i % 2])
        cells.append(("image", rep, source))
    cells += [("label", rep, src) for rep, src in zip(FIELD_KINDS["class_label"].accepts,
                                                     ("save_to_disk", "parquet", "csv"))]
    return cells


@pytest.fixture(scope="module")
def image_reference_metrics(pair_data, tmp_path_factory):
    """The reference form: class folders of PNG files."""
    folder = tmp_path_factory.mktemp("img_ref")
    ref = image_reference(pair_data)
    for split in SPLITS:
        for i, (im, y) in enumerate(zip(ref[split]["image"], ref[split]["label"])):
            file = folder / split / ref[split]["classes"][y] / f"{i:03d}.png"
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_bytes(_png(im))
    data = {"path": str(folder), "train_file": "train", "eval_file": "validation", "test_file": "test"}
    _detected(folder, "image_classification", {})
    return ref, _train(folder, "ref", _recipe("image_classification", data, TINY_TIMM))


@pytest.mark.parametrize("field, rep, source", _image_cells())
def test_images_every_representation_reaches_the_reference_metrics(image_reference_metrics, tmp_path, field, rep,
                                                                   source):
    ref, expected = image_reference_metrics
    folder = tmp_path / "data"
    splits, feats = {}, {}
    for split in SPLITS:
        r = ref[split]
        values, feature = WRITERS["image"][rep if field == "image" else "path"](r["image"], folder, split, "pic")
        cols = {"pic": values}
        if feature is not None:
            feats["pic"] = feature
        labels, feature = WRITERS["class_label"][rep if field == "label" else "string"](r["label"], r["classes"])
        cols["cls"] = list(labels)
        if feature is not None:
            feats["cls"] = feature
        splits[split] = cols
    path = write_source(source, folder, splits, feats)
    _detected(path, "image_classification", {"image": "pic", "label": "cls"})
    got = _train(tmp_path, "run", _recipe("image_classification", {"path": path, "columns": {"image": "pic",
                                                                                           "label": "cls"}}, TINY_TIMM))
    assert got == expected  # (int labels: classes named 0, 1, 2 instead of a, b, c; the same ids)


# --- speech -------------------------------------------------------------------------------------------------------

SPEECH_MODEL = {"type": "speech", "head": "cross", "encoder": {"type": "mel_conformer", "hidden_size": 16,
                                                                 "num_layers": 1, "num_heads": 2, "ff_size": 32}}


@pytest.fixture(scope="module")
def speech_reference_metrics(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (make install)")
    from hfstage.data.prepare import prepare_espeak_l2

    folder = tmp_path_factory.mktemp("speech_ref")
    prepare_espeak_l2(folder, seed=0, words=4)
    data = {"path": str(folder), "train_file": "train", "eval_file": "val", "test_file": "test"}
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines() if line.strip()]
    speech_recipe = _recipe("speech_assessment", data, SPEECH_MODEL)
    speech_recipe["defaults"] = {**speech_recipe["defaults"], "loss": {"type": "ctc_mispronunciation"}}
    _detected(folder, "speech_assessment", {})
    return folder, rows, speech_recipe, _train(folder, "ref", speech_recipe)


def _speech_cells():
    cells = [("audio", rep, src) for rep, src in zip(FIELD_KINDS["audio"].accepts,
                                                    ("save_to_disk", "metadata.jsonl", "parquet", "save_to_disk"))]
    cells += [("canonical+spoken", rep, src) for rep, src in zip(FIELD_KINDS["phonemes"].accepts,
                                                                ("metadata.jsonl", "metadata.csv"))]
    cells += [("labels", rep, src) for rep, src in zip(FIELD_KINDS["phoneme_labels"].accepts,
                                                      ("metadata.jsonl", "metadata.csv"))]
    return cells


@pytest.mark.parametrize("field, rep, source", _speech_cells())
def test_speech_every_representation_reaches_the_reference_metrics(speech_reference_metrics, tmp_path, field, rep,
                                                                   source):
    """Other column names everywhere (data.columns), hfstage's own metadata files included."""
    import datasets
    import soundfile

    ref_folder, rows, recipe, expected = speech_reference_metrics
    names = {"audio": "wav", "canonical": "canonical_phonemes", "spoken": "spoken_phonemes", "labels": "error_labels"}
    text = source == "metadata.csv"  # a CSV holds strings: the other fields as strings too
    phon = WRITERS["phonemes"][rep if field == "canonical+spoken" else
                               "space-separated string" if text else "list of strings"]
    labs = WRITERS["phoneme_labels"][rep if field == "labels" else "string of 0/1" if text else "list of 0/1"]
    folder = tmp_path / "data"
    shutil.copytree(ref_folder / "audio", folder / "audio")
    table = [{names["canonical"]: phon(r["canonical"]), names["spoken"]: phon(r["spoken"]),
              names["labels"]: labs(r["labels"]), "part": r["split"], "file": r["path"]} for r in rows]
    columns = {**names, "split": "part"}
    if source.startswith("metadata"):
        for row in table:
            row[names["audio"]] = row.pop("file")
        if source == "metadata.jsonl":
            (folder / source).write_text("".join(json.dumps(row) + "\n" for row in table))
        else:
            import csv

            with open(folder / source, "w", newline="") as fh:
                writer = csv.DictWriter(fh, list(table[0]))
                writer.writeheader()
                writer.writerows(table)
        data = {**recipe["data"], "path": str(folder), "columns": columns}
    else:
        rep_audio = rep if field == "audio" else "path"
        per_split = {}
        for split in ("train", "val", "test"):
            chosen = [row for row in table if row["part"] == split]
            files = [str(folder / row["file"]) for row in chosen]
            if rep_audio in ("path", "Audio feature"):
                audio = files
            elif rep_audio == "bytes":
                audio = [Path(f).read_bytes() for f in files]
            else:
                audio = []
                for f in files:
                    wave, rate = soundfile.read(f, dtype="float32")
                    audio.append({"array": wave, "sampling_rate": rate})
            cols = {k: [row[k] for row in chosen] for k in (names["canonical"], names["spoken"], names["labels"])}
            name = {"val": "validation"}.get(split, split)  # the split names datasets gives parquet files
            per_split[name] = datasets.Dataset.from_dict({names["audio"]: audio, **cols})
            if rep_audio == "Audio feature":
                per_split[name] = per_split[name].cast_column(names["audio"], datasets.Audio(decode=False))
        out = tmp_path / "source"
        if source == "save_to_disk":
            datasets.DatasetDict(per_split).save_to_disk(str(out))
        else:
            out.mkdir()
            for split, ds in per_split.items():
                ds.to_parquet(str(out / f"{split}-00000-of-00001.parquet"))
        data = {**recipe["data"], "path": str(out), "eval_file": "validation", "columns": dict(names)}
    _detected(data["path"], "speech_assessment", data["columns"])
    got = _train(tmp_path, "run", {**recipe, "data": data})
    assert got == expected


# --- error cells --------------------------------------------------------------------------------------------------

def test_a_missing_column_exits_2_naming_it_and_listing_the_columns(pair_data, tmp_path, capsys):
    ref = pair_reference(pair_data)
    splits = {}
    for split in SPLITS:
        splits[split], feats = _pair_columns(ref[split], "image_a+image_b", "Image feature (bytes)", tmp_path, split)
    path = write_source("parquet", tmp_path / "data", splits, feats)
    recipe = _recipe("pair_classification", {"path": path, "columns": {"image_a": "left", "image_b": "rigth",
                                                                        "label": "same"}}, TINY_MODEL)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({**recipe, "output_dir": str(tmp_path / "run")}))
    capsys.readouterr()  # the progress bars of writing the data
    assert main(["train", "--config", str(tmp_path / "r.yaml")]) == 2
    err = capsys.readouterr().err
    assert "no column 'rigth' for image_b (data.columns.image_b); its columns: left, right, same" in err
    assert err.count("\n") == 1 and not (tmp_path / "run").exists()


def test_a_field_the_task_does_not_have_and_an_unreadable_representation_exit_2(pair_data, tmp_path, capsys):
    recipe = _recipe("pair_classification", {"path": str(pair_data), "columns": {"imag_a": "left"}}, TINY_MODEL)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({**recipe, "output_dir": str(tmp_path / "run")}))
    assert main(["plan", "--config", str(tmp_path / "r.yaml")]) == 2
    assert "data.columns.imag_a: not a field of pair_classification (did you mean 'image_a'?)" in capsys.readouterr().err
    import datasets

    folder = tmp_path / "structs"
    rows = {"left": [{"x": 1}] * 4, "right": [{"x": 1}] * 4, "same": [0, 1, 0, 1]}
    datasets.DatasetDict({s: datasets.Dataset.from_dict(rows) for s in SPLITS}).save_to_disk(str(folder))
    recipe["data"] = {"path": str(folder), "columns": {"image_a": "left", "image_b": "right", "label": "same"}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({**recipe, "output_dir": str(tmp_path / "run")}))
    assert main(["train", "--config", str(tmp_path / "r.yaml")]) == 2
    err = capsys.readouterr().err
    assert re.search(r"\[split train\] \(data.train_file\): field 'image_a' \(column 'left'\) holds values of type "
                     r"struct<x: int64>; it accepts Image feature \(bytes\), .*nested list", err), err


def test_own_npz_files_with_other_key_names_train_through_data_columns(pair_reference_metrics, sequence_reference_metrics,
                                                                       tmp_path):
    ref, expected = pair_reference_metrics
    folder = tmp_path / "pairs"
    folder.mkdir()
    for split, file in zip(SPLITS, ("train.npz", "val.npz", "test_public.npz")):
        r = ref[split]
        np.savez(folder / file, images=np.stack([np.stack([a, b]) for a, b in zip(r["image_a"], r["image_b"])]),
                 same=r["label"])
    got = _train(tmp_path, "pairs_run", _recipe("pair_classification", {"path": str(folder), "columns": {
        "pair": "images", "label": "same"}}, TINY_MODEL))
    assert got == expected
    ref, expected = sequence_reference_metrics
    folder = tmp_path / "seqs"
    folder.mkdir()
    for split, file in zip(SPLITS, ("train.npz", "val.npz", "test_public.npz")):
        r = ref[split]
        np.savez(folder / file, frames=r["padded"], target=r["label"], n=r["lengths"], classes=np.asarray(r["classes"]))
    got = _train(tmp_path, "seq_run", _recipe("sequence_classification", {"path": str(folder), "columns": {
        "features": "frames", "label": "target", "lengths": "n"}}, SEQUENCE_MODEL))
    assert got == expected


@pytest.mark.slow  # a full recipe
def test_the_quickstart_recipe_trains_on_mnist_pairs_with_image_columns_and_a_classlabel(pair_data, tmp_path):
    """The Hub's standard form of a pair set (two Image() columns, a ClassLabel), as parquet files and as a
    save_to_disk folder, through data.columns with configs/quickstart.yaml (quick test): the .npz run's metrics."""
    import datasets

    features = datasets.Features({"left": datasets.Image(), "right": datasets.Image(),
                                  "same": datasets.ClassLabel(names=["different", "same"])})
    sets = {}
    for split, file in zip(SPLITS, ("train.npz", "val.npz", "test_public.npz")):
        z = np.load(pair_data / file)
        sets[split] = datasets.Dataset.from_dict({"left": [{"bytes": _png(a), "path": None} for a in z["x"][:, 0]],
                                                  "right": [{"bytes": _png(b), "path": None} for b in z["x"][:, 1]],
                                                  "same": z["y"]}, features=features)
    datasets.DatasetDict(sets).save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "parquet").mkdir()
    for split, ds in sets.items():
        ds.to_parquet(str(tmp_path / "parquet" / f"{split}-00000-of-00001.parquet"))
    results = []
    for name, path, columns in (("npz", pair_data, None), ("saved", tmp_path / "saved", True),
                                ("parquet", tmp_path / "parquet", True)):
        args = ["train", "--config", str(ROOT / "configs/quickstart.yaml"), "quick_test=true", "report_to=[none]",
                f"data.path={path}", f"output_dir={tmp_path / ('run_' + name)}"]
        if columns:
            args.append("data.columns={image_a: left, image_b: right, label: same}")
        assert main(args) == 0
        run = json.loads((tmp_path / f"run_{name}" / "run.json").read_text())
        best = json.loads((tmp_path / f"run_{name}" / run["best_stage_dir"] / "stage.json").read_text())
        results.append({k: v for part in ("metrics", "test_metrics") for k, v in best[part].items()
                        if "runtime" not in k and "per_second" not in k})
    assert results[0] == results[1] == results[2]


def _image_column_pairs(ref: dict, broken: dict | None = None) -> dict:
    """Each split as a ``datasets.Dataset`` of two Image() columns (PNG bytes) and a ClassLabel; ``broken``: a
    value put in row 5 of the training split's first column."""
    import datasets

    features = datasets.Features({"left": datasets.Image(), "right": datasets.Image(),
                                  "same": datasets.ClassLabel(names=["different", "same"])})
    out = {}
    for split, r in ref.items():
        left = [{"bytes": _png(a), "path": None} for a in r["image_a"]]
        if broken is not None and split == "train":
            left[5] = broken
        out[split] = datasets.Dataset.from_dict({"left": left, "right": [{"bytes": _png(b), "path": None}
                                                                          for b in r["image_b"]], "same": r["label"]},
                                                features=features)
    return out


def test_pairs_of_image_columns_from_every_other_source_kind(pair_reference_metrics, tmp_path, hub):
    """Arrow files, hf://datasets on the (local) Hub, and Dataset objects handed to hfstage.train: the reference
    metrics (the Python API's run has no test split: its eval metrics)."""
    import pyarrow as pa
    from huggingface_hub import HfApi

    import hfstage

    ref, expected = pair_reference_metrics
    sets = _image_column_pairs(ref)
    columns = {"image_a": "left", "image_b": "right", "label": "same"}
    arrow = tmp_path / "arrow"
    arrow.mkdir()
    for split, ds in sets.items():  # Arrow stream files, as Dataset.save_to_disk writes them, by split name
        table = ds.data.table
        with pa.OSFile(str(arrow / f"{split}-00000-of-00001.arrow"), "wb") as sink:
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
    assert _train(tmp_path, "arrow_run", _recipe("pair_classification", {"path": str(arrow), "columns": columns},
                                                 TINY_MODEL)) == expected
    parquet = tmp_path / "parquet"
    parquet.mkdir()
    for split, ds in sets.items():
        ds.to_parquet(str(parquet / f"{split}-00000-of-00001.parquet"))
    api = HfApi()
    api.create_repo("tester/image-pairs", repo_type="dataset")
    api.upload_folder(repo_id="tester/image-pairs", repo_type="dataset", folder_path=str(parquet), path_in_repo="data")
    assert _train(tmp_path, "hub_run", _recipe("pair_classification", {"path": "hf://datasets/tester/image-pairs",
                                                                       "columns": columns}, TINY_MODEL)) == expected
    recipe = _recipe("pair_classification", {"path": "unused", "columns": columns, "test_file": None}, TINY_MODEL)
    (tmp_path / "api.yaml").write_text(yaml.safe_dump({**recipe, "output_dir": str(tmp_path / "api_run")}))
    assert hfstage.train(tmp_path / "api.yaml", train_dataset=sets["train"], eval_dataset=sets["validation"]).status \
        == "finished"
    record = json.loads((tmp_path / "api_run" / "stage_1_only" / "stage.json").read_text())
    assert {k: v for k, v in record["metrics"].items() if "runtime" not in k and "per_second" not in k} == \
        {k: v for k, v in expected.items() if k.startswith("eval_")}


def test_images_from_an_imagefolder_style_folder_with_metadata(image_reference_metrics, tmp_path):
    """A sub-folder per split holding the images and a metadata.csv naming them by file_name (the imagefolder
    layout), with a label column of another name."""
    ref, expected = image_reference_metrics
    folder = tmp_path / "data"
    for split in SPLITS:
        (folder / split).mkdir(parents=True)
        rows = ["file_name,kind"]
        for i, (im, y) in enumerate(zip(ref[split]["image"], ref[split]["label"])):
            (folder / split / f"{i:03d}.png").write_bytes(_png(im))
            rows.append(f"{i:03d}.png,{ref[split]['classes'][y]}")
        (folder / split / "metadata.csv").write_text("\n".join(rows) + "\n")
    got = _train(tmp_path, "run", _recipe("image_classification", {"path": str(folder), "columns": {"label": "kind"}},
                                          TINY_TIMM))
    assert got == expected


def test_image_columns_are_decoded_per_batch_never_held_whole(pair_data):
    """A split of Image() columns keeps its encoded rows in their Arrow table; a batch decodes only its own rows
    (equal to the .npz pixels), and loading the split decodes nothing (each image is verified, not decoded)."""
    import tracemalloc

    import torch

    from hfstage.data.fields import EncodedImages
    from hfstage.data.npz_pairs import PairDataset

    x = np.load(pair_data / "train.npz")["x"]
    ref = {"train": {"image_a": list(x[:, 0]), "image_b": list(x[:, 1]), "label": np.load(pair_data / "train.npz")["y"]}}
    split = _image_column_pairs(ref)["train"]
    tracemalloc.start()
    dataset = PairDataset.from_dataset(split, {"image_a": "left", "image_b": "right", "label": "same"}, "train")
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert isinstance(dataset.images.a, EncodedImages) and isinstance(dataset.images.b, EncodedImages)
    assert held < x.nbytes / 2  # not the decoded split (and not a copy of it)
    batch = dataset.__getitems__([7, 0, 300])
    assert batch["pixel_values"].dtype == torch.uint8 and np.array_equal(batch["pixel_values"].numpy(), x[[7, 0, 300]])


@pytest.mark.parametrize("breakage, message", [
    ("corrupt", r"row 5: field 'image_a' \(column 'left'\): the stored bytes is not a readable image"),
    ("missing", r"row 5: field 'image_a' \(column 'left'\): image file .*nowhere.png not found"),
])
def test_a_row_the_decoder_cannot_read_exits_2_naming_the_split_row_field_and_column(pair_reference_metrics, tmp_path,
                                                                                     capsys, breakage, message):
    ref, _ = pair_reference_metrics
    sets = _image_column_pairs(ref, {"bytes": b"\x89PNG\r\n\x1a\nnot really", "path": None} if breakage == "corrupt"
                               else {"bytes": None, "path": "nowhere.png"})
    import pyarrow.parquet as pq

    (tmp_path / "saved").mkdir()
    for split, ds in sets.items():  # the table as it is (datasets' writers would open the missing file themselves)
        pq.write_table(ds.data.table, tmp_path / "saved" / f"{split}-00000-of-00001.parquet")
    recipe = _recipe("pair_classification", {"path": str(tmp_path / "saved"), "columns": {
        "image_a": "left", "image_b": "right", "label": "same"}}, TINY_MODEL)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({**recipe, "output_dir": str(tmp_path / "run")}))
    capsys.readouterr()
    assert main(["train", "--config", str(tmp_path / "r.yaml")]) == 2
    err = capsys.readouterr().err
    assert re.search(r"saved \[split train\] \(data.train_file\): " + message, err), err
    assert err.count("\n") == 1


def test_ragged_rows_with_a_lengths_column_use_it_and_refuse_a_length_beyond_the_row():
    import datasets

    from hfstage.data.npz_sequences import SequenceDataset
    from hfstage.errors import DataError

    rows = {"f": [[[1.0, 2.0]] * 5, [[3.0, 4.0]] * 3], "n": [4, 3], "y": [0, 1]}
    data = SequenceDataset.from_dataset(datasets.Dataset.from_dict(rows), {"features": "f", "lengths": "n",
                                                                           "label": "y"}, "train")
    assert data.lengths.tolist() == [4, 3] and data.__getitems__([0, 1])["input_values"].shape == (2, 5, 2)
    rows["n"] = [4, 6]
    with pytest.raises(DataError, match=r"train: column 'n' must be in \[1, the row's 3 frames\]; row 1 has 6"):
        SequenceDataset.from_dataset(datasets.Dataset.from_dict(rows), {"features": "f", "lengths": "n", "label": "y"},
                                     "train")


def test_a_split_of_another_size_is_resized_to_the_training_size_with_a_warning(pair_data, tmp_path, caplog):
    from PIL import Image

    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(pair_data / "train.npz", folder / "train.npz")
    z = np.load(pair_data / "val.npz")
    big = np.stack([[np.asarray(Image.fromarray(im).resize((36, 36), Image.BILINEAR)) for im in pair] for pair in z["x"]])
    np.savez(folder / "val.npz", x=big, y=z["y"])
    recipe = _recipe("pair_classification", {"path": str(folder), "test_file": None}, TINY_MODEL)
    with caplog.at_level("WARNING", logger="hfstage"):
        _train(tmp_path, "run", recipe)
    assert "val.npz: images of 36x36 are resized to 28x28 (the model's image size" in caplog.text


def test_decoders_read_the_text_forms_csv_exports_write_and_a_classlabel_by_its_names():
    import datasets

    from hfstage.data.fields import binary_labels, phoneme_labels, phonemes

    assert phonemes("['k', 'ae', 't']", "w", "canonical", "c") == ["k", "ae", "t"] == phonemes("k ae t", "w", "c", "c")
    for text in ("[0, 1, 0]", "0 1 0", "0,1,0", "010"):
        assert phoneme_labels(text, "w", "labels", "l") == [0, 1, 0]
    # a ClassLabel whose names put the match first: the names decide, not the class ids
    first = datasets.Dataset.from_dict({"y": [0, 1, 1]}, features=datasets.Features(
        {"y": datasets.ClassLabel(names=["same", "different"])}))
    plain = datasets.Dataset.from_dict({"y": [0, 1, 1]}, features=datasets.Features(
        {"y": datasets.ClassLabel(names=["cat", "dog"])}))
    assert binary_labels(first, "label", "y", "w").tolist() == [1, 0, 0]
    assert binary_labels(plain, "label", "y", "w").tolist() == [0, 1, 1]
