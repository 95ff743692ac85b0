"""``dcsam bench``: the JSON's structure and that its figures are positive (never a wall-clock threshold)."""

import argparse
import json

import numpy as np
import pytest

from dcsam import bench
from dcsam.cli import bench as bench_cli


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dcsam")
    sub = parser.add_subparsers(dest="command", required=True)
    bench_cli.add_parsers(sub)
    return parser


def test_parser_defaults_and_options():
    args = _parser().parse_args(
        [
            "bench",
            "--sam",
            "sam2.1_hiera_t",
            "--random-weights",
            "--batch-size",
            "4",
            "--precision",
            "bf16",
            "--image-size",
            "256",
            "--input-size",
            "640x480",
            "--iterations",
            "3",
            "--warmup",
            "0",
            "--compile",
            "--device",
            "cpu",
        ]
    )
    assert args.func is bench_cli.cmd_bench
    opts = bench.BenchOptions.from_args(args)
    assert opts.random_weights == "sam"  # alone: SAM only, the default backbone's weights are bundled
    assert (opts.batch_size, opts.precision, opts.image_size, opts.input_size) == (4, "bf16", 256, (640, 480))
    assert (opts.iterations, opts.warmup, opts.compile, opts.device) == (3, 0, True, "cpu")
    defaults = bench.BenchOptions.from_args(_parser().parse_args(["bench"]))
    assert defaults.random_weights is None and defaults.batch_size == 8 and defaults.warmup == 2
    assert defaults.video and defaults.video_frames == 64 and defaults.video_size == (854, 480)
    assert defaults.video_objects == (1, 3) and defaults.video_warmup_frames == 16


def test_parser_video_options():
    args = _parser().parse_args(
        [
            "bench",
            "--video-frames",
            "5",
            "--video-size",
            "160x120",
            "--video-objects",
            "3,1,3",
            "--video-warmup-frames",
            "2",
        ]
    )
    opts = bench.BenchOptions.from_args(args)
    assert (opts.video, opts.video_frames, opts.video_size, opts.video_objects) == (True, 5, (160, 120), (3, 1))
    assert opts.video_warmup_frames == 2
    assert bench.BenchOptions.from_args(_parser().parse_args(["bench", "--no-video"])).video is False


@pytest.mark.parametrize(
    "argv",
    [
        ["--batch-size", "0"],
        ["--input-size", "640"],
        ["--precision", "fp8"],
        ["--warmup", "-1"],
        ["--video-frames", "1"],
        ["--video-objects", "0,3"],
        ["--video-objects", "one"],
        ["--video-size", "854"],
        ["--video-warmup-frames", "0"],
    ],
)
def test_parser_rejects_bad_values(argv, capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["bench", *argv])


def test_synthetic_scene_is_deterministic_and_has_an_object():
    img, mask = bench.synthetic_scene(96, 64, np.random.default_rng(3))
    img2, mask2 = bench.synthetic_scene(96, 64, np.random.default_rng(3))
    assert img.shape == (64, 96, 3) and img.dtype == np.uint8 and mask.shape == (64, 96)
    assert 0 < mask.mean() < 0.5
    assert np.array_equal(img, img2) and np.array_equal(mask, mask2)
    assert bench.encode_jpeg(img)[:2] == b"\xff\xd8"


def test_synthetic_video_moves_shapes_in_separate_lanes():
    frames, masks = bench.synthetic_video(160, 120, 6, 3, np.random.default_rng(1))
    frames2, masks2 = bench.synthetic_video(160, 120, 6, 3, np.random.default_rng(1))
    assert len(frames) == 6 and all(f.shape == (120, 160, 3) and f.dtype == np.uint8 for f in frames)
    assert masks.shape == (3, 120, 160) and masks.dtype == bool
    assert all(0 < m.mean() < 0.2 for m in masks)
    assert not (masks[0] & masks[1]).any() and not (masks[1] & masks[2]).any()  # one lane each
    rows = [np.flatnonzero(m.any(axis=1)) for m in masks]
    assert rows[0].max() < rows[1].min() and rows[1].max() < rows[2].min()
    assert np.abs(frames[5].astype(int) - frames[0].astype(int)).mean() > 5  # the shapes moved
    assert all(np.array_equal(a, b) for a, b in zip(frames, frames2)) and np.array_equal(masks, masks2)


def test_mean_iou_skips_the_conditioning_frame_and_counts_two_empty_masks_as_agreement():
    a = np.zeros((4, 4), bool)
    b = a.copy()
    a[:2], b[:1] = True, True
    ours = {0: [a, a], 1: [a, a], 2: [a, np.zeros_like(a)]}
    theirs = {0: np.stack([~a, ~a]), 1: np.stack([a, b]), 2: np.stack([b, np.zeros_like(a)])}
    assert bench.mean_iou(ours, theirs) == pytest.approx((1 + 0.5 + 0.5 + 1) / 4)


def test_video_bench_needs_a_sam2_model():
    from types import SimpleNamespace

    seg = SimpleNamespace(engine=SimpleNamespace(model=None))  # e.g. the lite engine, or SAM 1
    out = bench.video_bench(bench.BenchOptions(sam="sam_vit_b"), seg, "fp32")
    assert out["status"].startswith("skipped") and "SAM 2" in out["status"]


def test_outputs_png_built_in_and_the_backend_brush_registered():
    from dcsam.errors import DcsamError

    mask = np.zeros((6, 8), bool)
    mask[2:4, 3:6] = True
    png = bench.load_output("png")
    assert png.stage == "png" and png.encode(mask, "object", 0.9)[:4] == b"\x89PNG"
    assert png.encode(np.zeros_like(mask), "object", 0.9) is None
    assert png.decode(bench.encode_jpeg(np.zeros((8, 8, 3), np.uint8))).shape == (8, 8, 3)
    # the backend registers Label Studio's brush RLE through the dcsam.bench_outputs entry point: the default
    assert bench.output_names() == ["labelstudio-brush", "png"]
    brush = bench.load_output()
    assert brush.name == "labelstudio-brush" and brush.stage == "rle"
    region = brush.encode(mask, "object", 0.9)
    assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["object"] and region["value"]["rle"]
    assert (region["original_width"], region["original_height"]) == (8, 6)
    assert brush.encode(np.zeros_like(mask), "object", 0.9) is None
    with pytest.raises(DcsamError, match="no bench output"):
        bench.load_output("cvat")


def _positive_numbers(obj, path="$"):
    """Every int/float in the tree, with its path (booleans aside)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _positive_numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _positive_numbers(v, f"{path}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield path, obj


def _bench_tiny_sam2_on_cpu(capsys, *argv: str) -> dict:
    """``dcsam bench`` on the tiny SAM 2 (random weights, SAM input 256) on the CPU; its JSON."""
    args = _parser().parse_args(
        [
            "bench",
            "--sam",
            "sam2.1_hiera_t",
            "--random-weights",
            "--image-size",
            "256",
            "--offline",
            "--device",
            "cpu",
            *argv,
        ]
    )
    assert args.func(args) == 0
    return json.loads(capsys.readouterr().out)  # stdout holds the JSON and nothing else


@pytest.mark.slow
def test_bench_tiny_sam2_on_cpu_prints_json(capsys):
    out = _bench_tiny_sam2_on_cpu(
        capsys, "--input-size", "192x144", "--batch-size", "2", "--iterations", "1", "--warmup", "1", "--no-video"
    )

    assert set(out) >= {
        "schema",
        "device",
        "config",
        "example",
        "end_to_end",
        "stages",
        "stages_total",
        "sam_encoder_raw",
        "ratios",
        "video",
        "notes",
    }
    assert out["device"]["type"] == "cpu"
    cfg = out["config"]
    assert cfg["sam"] == "sam2.1_hiera_t" and cfg["batch_size"] == 2 and cfg["sam_image_size"] == 256
    assert cfg["precision"] == {"requested": "auto", "effective": "fp32"}
    assert cfg["model_version"].endswith("-random") and cfg["decoder"] == "coldstart"
    assert out["example"]["cached"] is True
    e2e = out["end_to_end"]
    assert e2e["images"] == 2 and 0 <= e2e["masks_nonempty"] <= 2
    assert set(e2e["batch_ms"]) == {"mean", "p50", "p90", "min"}
    assert list(out["stages"]) == ["decode", "preprocess", "backbone", "sam_encoder", "prompt_decoder", "rle"]
    for stage in out["stages"].values():
        assert set(stage) == {"ms_per_batch", "ms_per_image", "share"}
    assert abs(sum(s["share"] for s in out["stages"].values()) - 1.0) < 0.01
    assert "forward_image" in out["sam_encoder_raw"]["callable"]
    assert set(out["ratios"]) == {"end_to_end_over_raw_encoder", "sam_encoder_stage_over_raw"}
    assert out["peak_gpu_memory_mib"] is None  # CPU
    assert out["video"] == {"status": "skipped (--no-video)"}

    numbers = dict(
        _positive_numbers(
            {k: out[k] for k in ("example", "end_to_end", "stages", "stages_total", "sam_encoder_raw", "ratios")}
        )
    )
    numbers.pop("$.end_to_end.masks_nonempty")  # a count, may be 0 with random weights
    shares = [k for k in numbers if k.endswith(".share")]
    for key in shares:  # a share rounds to 0 for a very cheap stage
        assert numbers.pop(key) >= 0, key
    assert numbers and all(v > 0 for v in numbers.values()), {k: v for k, v in numbers.items() if v <= 0}


@pytest.mark.slow
def test_bench_video_tiny_sam2_on_cpu(capsys):
    """Ours against upstream SAM2VideoPredictor on a 5-frame 160x120 clip, 1 and 3 objects (the image
    part as small as it goes)."""
    video = _bench_tiny_sam2_on_cpu(
        capsys,
        "--input-size",
        "160x120",
        "--batch-size",
        "1",
        "--iterations",
        "1",
        "--warmup",
        "0",
        "--video-frames",
        "5",
        "--video-size",
        "160x120",
        "--video-objects",
        "1,3",
        "--video-warmup-frames",
        "2",
    )["video"]

    assert video["status"] == "measured"
    assert "SAM2VideoPredictor" in video["sam2_video_predictor"] and "Sam2Propagator" in video["ours"]
    assert video["frames"] == 5 and video["frame_size"] == [160, 120] and video["warmup_frames"] == 2
    assert video["sam_image_size"] == 256 and video["precision"] == "fp32" and video["compile"] is False
    assert video["targets"] == {"1": 1.0, "3": 2.0}
    assert list(video["by_objects"]) == ["1", "3"]
    for k, run in video["by_objects"].items():
        assert run["objects"] == int(k) and run["frames"] == 5
        for key in ("ours_fps", "sam2_video_predictor_fps", "ratio", "ours_s", "sam2_video_predictor_s"):
            assert run[key] > 0, key
        assert run["ratio"] == pytest.approx(run["ours_fps"] / run["sam2_video_predictor_fps"], rel=1e-3)
        assert run["target_ratio"] == {"1": 1.0, "3": 2.0}[k]
        assert run["target_met"] is (run["ratio"] >= run["target_ratio"])  # whatever the CPU gives
        assert set(run["sam2_video_predictor_split_s"]) == {"init_state", "add_new_mask", "propagate_in_video"}
        assert all(v >= 0 for v in run["sam2_video_predictor_split_s"].values())
        assert 0.0 <= run["agreement_mean_iou"] <= 1.0
        assert all(0.0 <= v <= 1.0 for v in run["nonempty_share"].values())
        assert run["peak_gpu_memory_mib"] == {"ours": None, "sam2_video_predictor": None}  # CPU


def test_bench_is_a_dcsam_subcommand():
    from dcsam import cli

    args = cli.build_parser().parse_args(["bench", "--iterations", "2"])
    assert args.func is bench_cli.cmd_bench and args.iterations == 2


def test_spearman_ranks_with_ties_and_refuses_constant_input():
    from dcsam.bench.ranking import ranks, spearman

    assert list(ranks([0.3, 0.1, 0.3, 0.2])) == [2.5, 0.0, 2.5, 1.0]  # ties share their mean rank
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)  # 1 - 6 * 2 / (4 * 15)
    assert np.isnan(spearman([1, 2, 3], [5, 5, 5]))
    with pytest.raises(ValueError):
        spearman([1, 2], [1, 2, 3])
