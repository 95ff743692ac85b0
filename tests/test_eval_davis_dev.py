"""scripts/eval_davis_dev.py on a tiny synthetic DAVIS folder written in tmp_path."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "eval_davis_dev.py"


def _davis(root: Path, frames: int = 11, size=(96, 128)) -> None:
    """'dog' (an easy video by name) and 'libby' (a hard one): a square moving on a textured background."""
    rng = np.random.default_rng(0)
    h, w = size
    for seq, colour in (("dog", (230, 60, 30)), ("libby", (220, 80, 40))):
        (root / "JPEGImages" / seq).mkdir(parents=True)
        (root / "Annotations" / seq).mkdir(parents=True)
        background = rng.integers(60, 140, (h, w, 3)).astype(np.uint8)
        for t in range(frames):
            img, mask = background.copy(), np.zeros((h, w), np.uint8)
            y, x = 30, 10 + 4 * t
            img[y : y + 28, x : x + 28] = colour
            mask[y : y + 28, x : x + 28] = 255
            Image.fromarray(img).save(root / "JPEGImages" / seq / f"{t:05d}.jpg", quality=95)
            Image.fromarray(mask).save(root / "Annotations" / seq / f"{t:05d}.png")


def test_image_and_cross_protocols_with_easy_and_hard_means(tmp_path):
    _davis(tmp_path / "davis")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--protocol", "image", "--data", str(tmp_path / "davis"), "--json"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    image = json.loads(proc.stdout)["image"]
    rows = {r["name"]: r for r in image["rows"]}
    assert set(rows) == {"dog", "libby"} and all(r["queries"] == 1 for r in rows.values())  # frame 10 only
    assert image["means"]["iou"]["easy"] == rows["dog"]["iou"] and image["means"]["iou"]["hard"] == rows["libby"]["iou"]
    assert image["means"]["iou"]["all"] == pytest.approx((rows["dog"]["iou"] + rows["libby"]["iou"]) / 2)
    assert rows["dog"]["iou"] > 0.7

    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--protocol", "cross", "--data", str(tmp_path / "davis")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "car-roundabout -> car-shadow skipped" in proc.stderr  # pairs whose videos are missing
    lines = proc.stdout.splitlines()
    rows = [fields for fields in (line.split() for line in lines) if fields and "->" in fields[0]]
    assert [r[0] for r in rows] == ["dog->libby", "libby->dog"]
    assert all(r[4] == "11" for r in rows)  # every frame scored
    assert any(line.startswith("mean hard") for line in lines)


def test_video_options_reach_the_lite_propagation(tmp_path):
    _davis(tmp_path / "davis", frames=5)
    base = [sys.executable, str(SCRIPT), "--protocol", "video", "--data", str(tmp_path / "davis"), "--json"]
    proc = subprocess.run([*base, "--video-option", "views=2"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["video_options"] == {"views": "2"} and len(out["video"]["rows"]) == 2
    proc = subprocess.run([*base, "--video-option", "no_such_option=1"], capture_output=True, text=True)
    assert proc.returncode != 0 and "no_such_option" in proc.stderr


def test_the_decoding_ceiling_decodes_each_frames_ground_truth_cells(tmp_path):
    _davis(tmp_path / "davis", frames=6)
    base = [sys.executable, str(SCRIPT), "--protocol", "ceiling", "--data", str(tmp_path / "davis"), "--json"]
    proc = subprocess.run(base, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)["ceiling"]["rows"]}
    assert set(rows) == {"dog", "libby"}
    assert all(r["frames"] == 4 for r in rows.values())  # the video protocol's frames: not the first, not the last
    # a 28-pixel square on a 128-pixel frame spans whole cells of the grid: decoding its cells gives it back
    assert all(r["J"] > 0.9 and r["F"] > 0.9 for r in rows.values())
    proc = subprocess.run([*base, "--ceiling-stride", "4", "--sequences", "dog"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    finer = json.loads(proc.stdout)["ceiling"]
    assert finer["stride"] == 4 and [r["name"] for r in finer["rows"]] == ["dog"] and finer["rows"][0]["J"] > 0.9
    proc = subprocess.run([*base, "--engine", "dcsam"], capture_output=True, text=True)
    assert proc.returncode != 0 and "lite engine" in proc.stderr
