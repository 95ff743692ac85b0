"""Episodic datasets: synthetic, folder, and the PASCAL-5i / COCO-20i list generation."""

import numpy as np
import pytest
import torch
from PIL import Image

from dcsam.data import build_dataset
from dcsam.data.fewshot import MIN_PIXELS, fold_test_classes
from dcsam.data.synthetic import SyntheticEpisodes


def test_synthetic_items_are_deterministic_and_share_a_class():
    ds = SyntheticEpisodes(length=5, image_size=64, shots=2, seed=3)
    a, b = ds[2], ds[2]
    assert torch.equal(a["query_image"], b["query_image"]) and a["key"] == b["key"]
    assert a["support_images"].shape == (2, 3, 64, 64) and a["support_masks"].shape == (2, 64, 64)
    assert a["query_mask"].sum() > 0 and all(m.sum() > 0 for m in a["support_masks"])
    assert not torch.equal(ds[1]["query_image"], a["query_image"])
    val = build_dataset({"name": "synthetic", "image_size": 64, "seed": 3, "val_length": 7}, "val")
    assert len(val) == 7 and not torch.equal(val[2]["query_image"], a["query_image"])


def _write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_folder_dataset(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("apple", "pear"):
        for k in range(6):
            _write(tmp_path / cls / "images" / f"{k}.jpg", rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))
            mask = np.zeros((40, 50), np.uint8)
            mask[10:30, 5 + k : 25 + k] = 255
            _write(tmp_path / cls / "masks" / f"{k}.png", mask)
    train = build_dataset({"name": "folder", "root": str(tmp_path), "image_size": 32, "val_every": 3}, "train")
    val = build_dataset({"name": "folder", "root": str(tmp_path), "image_size": 32, "val_every": 3}, "val")
    assert len(train) == 8 and len(val) == 4
    item = train[0]
    assert item["query_image"].shape == (3, 32, 32) and set(item["query_mask"].unique().tolist()) <= {0.0, 1.0}
    assert item["class_id"] in (1, 2) and item["support_masks"].sum() > 0
    with pytest.raises(ValueError, match="no <class>/images"):
        build_dataset({"name": "folder", "root": str(tmp_path / "apple" / "images")}, "train")


def test_fold_classes():
    assert fold_test_classes("pascal5i", 0) == [1, 2, 3, 4, 5]
    assert fold_test_classes("pascal5i", 3) == [16, 17, 18, 19, 20]
    assert fold_test_classes("coco20i", 1) == [2 + 4 * k for k in range(20)]
    with pytest.raises(ValueError):
        fold_test_classes("pascal5i", 4)


def test_pascal_lists_generated_from_the_standard_layout(tmp_path):
    voc = tmp_path / "VOC2012"
    names = [f"2008_{i:06d}" for i in range(8)]
    side = 80  # 6400 px: big enough for MIN_PIXELS for one class covering most of it
    for i, name in enumerate(names):
        _write(voc / "JPEGImages" / f"{name}.jpg", np.full((side, side, 3), 40 * i % 255, np.uint8))
        label = np.zeros((side, side), np.uint8)
        label[:, :60] = 1 if i % 2 else 7  # class 1 (fold-0 test class) or 7 (a training class)
        label[:2] = 255  # boundary pixels
        label[70:, 70:] = 12  # a tiny region: below PFENet's size rule, never listed
        _write(voc / "SegmentationClassAug" / f"{name}.png", label)
    (voc / "ImageSets/Segmentation").mkdir(parents=True)
    (voc / "ImageSets/Segmentation/val.txt").write_text("\n".join(names[4:]))
    assert 60 * side - 2 * 60 >= MIN_PIXELS > 100
    spec = {"name": "pascal5i", "root": str(tmp_path), "fold": 0, "image_size": 32}
    train = build_dataset(spec, "train")
    val = build_dataset(spec, "val")
    assert len(train) == 2  # images 0 and 2 (class 7); class-1 images belong to the test fold
    assert len(val) == 2  # val images with class 1: 5 and 7
    item = val[0]
    assert item["class_id"] == 1
    assert (item["query_mask"] == 255).any()  # boundary kept for evaluation
    assert (tmp_path / "dcsam_lists" / "pascal5i_train_classes.json").exists()
