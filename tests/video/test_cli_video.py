"""dcsam eval-video, run as a user runs it."""

import json

import numpy as np
import pytest
from PIL import Image

from dcsam.masks import iou
from dcsam.video.vos_evaluation import davis_palette, evaluate_videos
from tests.test_cli import TINY_RANDOM_SAM2, run_cli


def _json_lines(stdout: str) -> tuple[list[dict], dict]:
    """eval-video --json: one {"sequence": row} line per sequence, then the report."""
    lines = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    return [line["sequence"] for line in lines[:-1]], lines[-1]


def _synthetic_davis(root, official: bool, frames: int = 5, size=(96, 128)) -> dict:
    """A tiny DAVIS folder written in ``root``: 'square' (one object, greyscale 0/255) and 'pair'
    (two objects, palette indices 1 and 2, as in DAVIS 2017), squares moving on a textured background.
    Returns each sequence's ground truth per frame, as index maps."""
    rng = np.random.default_rng(0)
    h, w = size
    sub = "480p" if official else ""
    truth = {}
    for seq, objects in (("square", [(1, (255, 40, 40))]), ("pair", [(1, (40, 220, 40)), (2, (40, 40, 255))])):
        jpeg, ann = root / "JPEGImages" / sub / seq, root / "Annotations" / sub / seq
        jpeg.mkdir(parents=True)
        ann.mkdir(parents=True)
        background = rng.integers(60, 140, (h, w, 3)).astype(np.uint8)
        truth[seq] = []
        for t in range(frames):
            img, idx = background.copy(), np.zeros((h, w), np.uint8)
            for k, colour in objects:
                y, x = 20 + 30 * (k - 1), 16 + 3 * t + 50 * (k - 1)
                img[y : y + 24, x : x + 24] = colour
                idx[y : y + 24, x : x + 24] = k
            Image.fromarray(img).save(jpeg / f"{t:05d}.jpg", quality=95)
            if len(objects) == 1:
                Image.fromarray((idx > 0).astype(np.uint8) * 255).save(ann / f"{t:05d}.png")
            else:
                pal = Image.frombytes("P", (w, h), idx.tobytes())
                pal.putpalette(davis_palette())
                pal.save(ann / f"{t:05d}.png")
            truth[seq].append(idx)
    return truth


def test_eval_video_official_layout_saves_palette_masks_and_streams_json_lines(tmp_path):
    truth = _synthetic_davis(tmp_path / "davis", official=True)
    out = tmp_path / "masks"
    proc = run_cli("eval-video", "--engine", "lite", "--davis-root", tmp_path / "davis", "--save-masks", out, "--json")
    rows, report = _json_lines(proc.stdout)
    assert [r["name"] for r in rows] == ["pair", "square"] == [r["name"] for r in report["sequences"]]
    assert rows == report["sequences"]  # each line is the row the report holds
    assert report["saved_masks"]["frames"] == 10
    palette = davis_palette()
    for seq, gt in truth.items():
        files = sorted((out / seq).iterdir())
        assert [f.name for f in files] == [f"{t:05d}.png" for t in range(5)]
        saved = [Image.open(f) for f in files]
        assert all(im.mode == "P" and im.getpalette()[:9] == palette[:9] for im in saved)
        idx = [np.asarray(im) for im in saved]
        assert set(np.unique(idx[0])) == set(np.unique(gt[0]))  # the given first frame, same indices
        # the saved masks are the ones scored: J from the files equals the report's J (frames 1..3)
        for r in next(s for s in report["sequences"] if s["name"] == seq)["objects"]:
            k = 1 if r["name"] == seq else int(r["name"].rsplit("obj", 1)[1])
            j = np.mean([iou(idx[t] == k, gt[t] == k) for t in range(1, 4)])
            assert r["J"] == pytest.approx(j, abs=1e-6) and r["J"] > 0.7


def test_eval_video_resolution_of_the_official_layout(tmp_path):
    _synthetic_davis(tmp_path / "davis", official=True, frames=3)
    proc = run_cli(
        "eval-video", "--engine", "lite", "--davis-root", tmp_path / "davis", "--resolution", "1080p", check=False
    )
    assert proc.returncode == 2 and "no 1080p frames" in proc.stderr and "480p" in proc.stderr


def test_eval_video_table_lines_come_as_sequences_are_scored(tmp_path):
    _synthetic_davis(tmp_path / "davis", official=False, frames=3)
    proc = run_cli("eval-video", "--engine", "lite", "--davis-root", tmp_path / "davis")
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["sequence", "J", "F", "J&F", "frames"]
    assert [line.split()[0] for line in lines[2:5]] == ["pair/obj1", "pair/obj2", "square"]
    assert lines[6].startswith("mean")


def test_evaluate_videos_reports_each_sequence_before_the_next_starts(tmp_path, data_dir):
    from dcsam.api import InContextSegmenter
    from dcsam.video.api import VideoSegmenter
    from dcsam.video.vos_evaluation import davis_samples

    _synthetic_davis(tmp_path / "davis", official=False, frames=3)
    events = []
    base = InContextSegmenter.from_config(engine="lite", device="cpu")
    shared = VideoSegmenter(base, propagation="lite")

    def factory():
        events.append("start")
        base.clear_examples()
        return shared

    samples = davis_samples(tmp_path / "davis", None)
    frames = []
    report = evaluate_videos(
        factory,
        samples,
        progress=False,
        on_sequence=lambda row: events.append(row["name"]),
        on_frame=lambda sample, i, masks: frames.append((sample.name, i, sorted(masks))),
    )
    assert events == ["start", "pair", "start", "square"]
    assert frames == [("pair", i, ["obj1", "obj2"]) for i in range(3)] + [("square", i, ["object"]) for i in range(3)]
    assert report["num_sequences"] == 2


def test_eval_video_davis_protocol_lite(data_dir):
    proc = run_cli(
        "eval-video",
        "--engine",
        "lite",
        "--davis-root",
        data_dir / "davis16-dev",
        "--sequences",
        "blackswan",
        "--max-frames",
        "6",
        "--json",
    )
    rows, report = _json_lines(proc.stdout)
    assert [r["name"] for r in rows] == ["blackswan"]
    assert report["protocol"] == "davis" and report["propagation"] == "lite" and report["frame_rule"] == "davis"
    [row] = report["objects"]
    assert row["name"] == "blackswan" and row["frames_scored"] == 4  # frames 1..4: not the given first, not the last
    assert row["J&F"] > 0.85 and report["mean"]["J&F"] == pytest.approx(row["J&F"])
    assert set(report["mean"]) >= {"J", "F", "J&F"}


def test_eval_video_in_context_protocol_table(data_dir):
    root = data_dir / "davis16-dev"
    proc = run_cli(
        "eval-video",
        "--engine",
        "lite",
        "--davis-root",
        root,
        "--sequences",
        "car-shadow",
        "--max-frames",
        "3",
        "--support-image",
        root / "JPEGImages" / "car-roundabout" / "00000.jpg",
        "--support-mask",
        root / "Annotations" / "car-roundabout" / "00000.png",
    )
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["sequence", "J", "F", "J&F", "frames"]
    assert lines[2].split()[0] == "car-shadow" and lines[2].split()[-1] == "3"  # every frame scored (in context)
    assert any(line.startswith("mean") for line in lines) and "every frame (IC-VOS)" in proc.stdout


def test_eval_video_icvos_layout(tmp_path, data_dir):
    src = data_dir / "davis16-dev"
    vid = tmp_path / "icvos" / "0001"
    (vid / "JPEGImages").mkdir(parents=True)
    (vid / "Annotations" / "3").mkdir(parents=True)
    for i in range(4):  # links to the shared data: nothing copied
        (vid / "JPEGImages" / f"{i}.jpg").symlink_to(src / "JPEGImages" / "car-shadow" / f"{i:05d}.jpg")
        (vid / "Annotations" / "3" / f"{i}.png").symlink_to(src / "Annotations" / "car-shadow" / f"{i:05d}.png")
    sup = tmp_path / "supports"
    sup.mkdir()
    (sup / "3.jpg").symlink_to(src / "JPEGImages" / "car-roundabout" / "00000.jpg")
    (sup / "3.png").symlink_to(src / "Annotations" / "car-roundabout" / "00000.png")
    _, report = _json_lines(
        run_cli(
            "eval-video", "--engine", "lite", "--icvos-root", tmp_path / "icvos", "--support-dir", sup, "--json"
        ).stdout
    )
    assert report["protocol"] == "icvos" and report["eval_size"] == 512 and report["frame_rule"] == "all"
    [row] = report["objects"]
    assert row["name"] == "0001/3" and row["frames_scored"] == 4 and row["J&F"] > 0.6
    # without supports: the first frame's mask is given (semi-supervised upper bound)
    _, report = _json_lines(
        run_cli("eval-video", "--engine", "lite", "--icvos-root", tmp_path / "icvos", "--json").stdout
    )
    assert report["frame_rule"] == "davis" and report["objects"][0]["frames_scored"] == 2


def test_eval_video_argument_errors(data_dir):
    proc = run_cli("eval-video", "--engine", "lite", check=False)
    assert proc.returncode == 2 and "--davis-root" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli(
        "eval-video", "--engine", "lite", "--davis-root", data_dir / "davis16-dev", "--sequences", "nope", check=False
    )
    assert proc.returncode == 2 and "no such sequence" in proc.stderr


@pytest.mark.slow
def test_eval_video_dcsam_random_sam2_tiny(data_dir):
    proc = run_cli(
        "eval-video",
        *TINY_RANDOM_SAM2,
        "--sam-image-size",
        "256",
        "--davis-root",
        data_dir / "davis16-dev",
        "--sequences",
        "dog",
        "--max-frames",
        "4",
        "--json",
    )
    _, report = _json_lines(proc.stdout)
    assert report["propagation"] == "sam2" and "RANDOM weights" in proc.stderr
    assert report["model_versions"][0].endswith("-random+video-sam2")
    assert report["objects"][0]["frames_scored"] == 2 and 0.0 <= report["mean"]["J&F"] <= 1.0
