"""Pair npz data: the real MNIST preparation, and every kind of bad input the loader must refuse."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hfstage.cli import main
from hfstage.data.npz_pairs import (
    PairCollator,
    PairDataset,
    augment_pairs,
    load_pair_arrays,
)
from hfstage.data.prepare import load_mnist, prepare_mnist_pairs
from hfstage.errors import DataError


def test_prepare_is_deterministic_balanced_and_correctly_labelled(tmp_path, pair_data):
    again = tmp_path / "again"
    prepare_mnist_pairs(again, seed=0, train_pairs=320, val_pairs=160, test_pairs=160)
    mnist = load_mnist()
    for (split, index) in (("train", 0), ("val", 1), ("test_public", 2)):
        a, b = np.load(pair_data / f"{split}.npz"), np.load(again / f"{split}.npz")
        assert set(a.files) == {"x", "y"}
        assert np.array_equal(a["x"], b["x"]) and np.array_equal(a["y"], b["y"])
        x, y = a["x"], a["y"]
        assert x.dtype == np.uint8 and x.shape[1:] == (2, 28, 28)
        assert y.sum() * 2 == len(y)  # balanced
        # every image comes from this split's MNIST images, and the label says whether the digits match
        images, labels = mnist[index]
        digit = {img.tobytes(): lab for img, lab in zip(images, labels)}
        da = np.array([digit[img.tobytes()] for img in x[:, 0]])
        db = np.array([digit[img.tobytes()] for img in x[:, 1]])
        assert np.array_equal((da == db).astype(int), y)
    other = prepare_mnist_pairs(tmp_path / "seed1", seed=1, train_pairs=320, val_pairs=160, test_pairs=160)
    assert other["seed"] == 1
    assert not np.array_equal(np.load(tmp_path / "seed1/val.npz")["x"], np.load(pair_data / "val.npz")["x"])


def test_splits_share_no_image(pair_data):
    seen = {}
    for split in ("train", "val", "test_public"):
        x = np.load(pair_data / f"{split}.npz")["x"]
        seen[split] = {img.tobytes() for img in x.reshape(-1, 28, 28)}
    mnist = load_mnist()
    train_images = {img.tobytes() for img in mnist[0][0]}
    for split in ("val", "test_public"):
        # MNIST itself may hold the odd identical digit across splits; our pairs never add any
        assert len(seen[split] & seen["train"]) <= len(seen[split] & train_images)
        assert len(seen[split] & seen["train"]) == 0


def test_dataset_batches_and_collator(pair_data):
    x, y = load_pair_arrays(pair_data / "val.npz")
    ds = PairDataset(x, y)
    batch = PairCollator()(ds.__getitems__([0, 5, 7]))
    assert batch["pixel_values"].dtype == torch.float32 and batch["pixel_values"].shape == (3, 2, 28, 28)
    assert torch.allclose(batch["pixel_values"][1], torch.from_numpy(x[5]).float() / 255)
    assert batch["labels"].tolist() == y[[0, 5, 7]].tolist()
    single = PairCollator()([ds[0], ds[5], ds[7]])  # a sampler that fetches one item at a time
    assert torch.equal(single["pixel_values"], batch["pixel_values"])


def test_augmentations_change_training_batches_only_as_asked(pair_data):
    x, _ = load_pair_arrays(pair_data / "val.npz")
    batch = torch.from_numpy(x[:16]).float() / 255
    torch.manual_seed(0)
    swapped = augment_pairs(batch, {"swap": 1.0})
    assert torch.equal(swapped, batch.flip(1))
    shifted = augment_pairs(batch, {"shift": 0.2, "rotate": 15})
    assert shifted.shape == batch.shape and not torch.allclose(shifted, batch)
    assert 0.0 <= shifted.min() and shifted.max() <= 1.0
    assert torch.allclose(augment_pairs(batch, {"shift": 0.0}), batch)


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


GOOD_X = np.zeros((4, 2, 28, 28), np.uint8)
GOOD_Y = np.array([0, 1, 0, 1])


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"y": GOOD_Y}, "missing key 'x'"),
        ({"x": GOOD_X}, "missing key 'y'"),
        ({"x": GOOD_X, "y": GOOD_Y, "z": GOOD_Y}, "unexpected key 'z'"),
        ({"x": np.zeros((4, 28, 28), np.uint8), "y": GOOD_Y}, "key 'x' must have shape (N, 2, H, W)"),
        ({"x": np.zeros((4, 3, 28, 28), np.uint8), "y": GOOD_Y}, "key 'x' must have shape (N, 2, H, W)"),
        ({"x": GOOD_X.astype(np.int32), "y": GOOD_Y}, "key 'x' must be uint8 or float"),
        ({"x": np.full((4, 2, 28, 28), np.nan, np.float32), "y": GOOD_Y}, "key 'x' holds NaN"),
        ({"x": GOOD_X, "y": np.array([0, 1, 2, 1])}, "key 'y' must be 0 or 1; sample 2 has 2"),
        ({"x": GOOD_X, "y": np.array([0, 1, 1])}, "key 'y' must have shape (4,)"),
        ({"x": GOOD_X, "y": np.array([0.0, np.nan, 1.0, 0.0])}, "key 'y' holds NaN"),
        ({"x": np.zeros((0, 2, 28, 28), np.uint8), "y": np.zeros(0)}, "is empty"),
    ],
)
def test_bad_arrays_are_refused_naming_file_and_key(tmp_path, arrays, message):
    path = write_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError) as err:
        load_pair_arrays(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_corrupt_and_missing_files(tmp_path):
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_pair_arrays(corrupt)
    with pytest.raises(DataError, match=r"file not found \(data.train_file\)"):
        load_pair_arrays(tmp_path / "nope.npz", "data.train_file")


@pytest.mark.parametrize("split, arrays, message", [
    ("val.npz", {"x": GOOD_X, "y": np.array([0, 1, 5, 1])}, "val.npz: key 'y' must be 0 or 1"),
    ("train.npz", {"x": np.zeros((4, 3, 20, 20), np.uint8), "y": GOOD_Y},
     "train.npz: key 'x' must have shape (N, 2, H, W), got (4, 3, 20, 20)"),
    ("test_public.npz", None, "test_public.npz: file not found (data.test_file)"),
])
def test_cli_refuses_bad_data_before_training_and_writes_nothing(tmp_path, pair_data, recipe, capsys, split, arrays, message):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train.npz", "val.npz", "test_public.npz"):
        (data / name).write_bytes((pair_data / name).read_bytes())
    if arrays is None:
        (data / split).unlink()
    else:
        write_npz(data / split, **arrays)
    path = recipe()
    assert main(["train", "--config", str(path), f"data.path={data}"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()
