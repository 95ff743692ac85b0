"""dcsam eval-video, run as a user runs it."""

import json

import pytest

from tests.test_cli import TINY_RANDOM_SAM2, run_cli


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
    report = json.loads(proc.stdout)
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
    report = json.loads(
        run_cli(
            "eval-video", "--engine", "lite", "--icvos-root", tmp_path / "icvos", "--support-dir", sup, "--json"
        ).stdout
    )
    assert report["protocol"] == "icvos" and report["eval_size"] == 512 and report["frame_rule"] == "all"
    [row] = report["objects"]
    assert row["name"] == "0001/3" and row["frames_scored"] == 4 and row["J&F"] > 0.6
    # without supports: the first frame's mask is given (semi-supervised upper bound)
    report = json.loads(run_cli("eval-video", "--engine", "lite", "--icvos-root", tmp_path / "icvos", "--json").stdout)
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
    report = json.loads(proc.stdout)
    assert report["propagation"] == "sam2" and "RANDOM weights" in proc.stderr
    assert report["model_versions"][0].endswith("-random+video-sam2")
    assert report["objects"][0]["frames_scored"] == 2 and 0.0 <= report["mean"]["J&F"] <= 1.0
