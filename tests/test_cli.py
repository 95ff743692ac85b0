"""The dcsam command line, run as a user runs it."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

# DC-SAM on the tiny SAM 2 with random SAM weights, offline
TINY_RANDOM_SAM2 = ("--engine", "dcsam", "--sam", "sam2.1_hiera_t", "--random-weights", "sam", "--offline")


def run_cli(*args, check=True, env=None):
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "dcsam.cli", *map(str, args)], capture_output=True, text=True, env=full_env
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"dcsam {' '.join(map(str, args))} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.mark.parametrize(
    "sam,variant,expected",
    [("vit_h", "full", 2_394_624), ("sam2.1_hiera_l", "full", 2_468_800), ("vit_h", "prior_only", 1_870_336)],
)
def test_model_info_trainable_counts(sam, variant, expected):
    info = json.loads(
        run_cli("model-info", "--sam", sam, "--backbone", "resnet50_v2", "--variant", variant, "--json").stdout
    )
    assert info["trainable_params"] == expected
    assert info["frozen_params"] > 100_000_000


@pytest.mark.slow
def test_predict_end_to_end_random_sam2_tiny(tmp_path, data_dir):
    root = data_dir / "perseg-mini"
    queries = [root / "duck_toy_01.jpg", root / "duck_toy_02.jpg"]
    proc = run_cli(
        "predict",
        *TINY_RANDOM_SAM2,
        "--example",
        root / "duck_toy_00.jpg",
        "--example-mask",
        root / "duck_toy_00.png",
        "--out",
        tmp_path,
        *queries,
    )
    assert "RANDOM weights" in proc.stderr
    for q in queries:
        mask = np.asarray(Image.open(tmp_path / f"{q.stem}.png"))
        assert mask.shape == np.asarray(Image.open(q)).shape[:2]
        assert set(np.unique(mask)) <= {0, 255}
        record = json.loads((tmp_path / f"{q.stem}.json").read_text())
        assert 0.0 <= record["score"] <= 1.0
        assert record["model_version"].startswith("dcsam-sam2.1_hiera_t-") and record["model_version"].endswith(
            "-random"
        )


def test_predict_without_checkpoint_offline_is_a_clear_error(tmp_path, data_dir):
    root = data_dir / "perseg-mini"
    proc = run_cli(
        "predict",
        "--engine",
        "dcsam",
        "--sam",
        "vit_b",
        "--offline",
        "--example",
        root / "cat_00.jpg",
        "--example-mask",
        root / "cat_00.png",
        "--out",
        tmp_path / "out",
        root / "cat_01.jpg",
        check=False,
        env={"DCSAM_CACHE_DIR": str(tmp_path / "empty-cache")},
    )
    assert proc.returncode == 2
    assert "sam_vit_b_01ec64.pth" in proc.stderr and "--sam-checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unpaired_examples_are_rejected(tmp_path, data_dir):
    root = data_dir / "perseg-mini"
    proc = run_cli(
        "predict",
        "--example",
        root / "cat_00.jpg",
        "--example",
        root / "cat_01.jpg",
        "--example-mask",
        root / "cat_00.png",
        "--out",
        tmp_path,
        root / "cat_02.jpg",
        check=False,
    )
    assert proc.returncode == 2 and "in pairs" in proc.stderr


def test_serve_and_preannotate_help_show_the_backend_options():
    # the backend registers both through the dcsam.commands entry point, with its own parsers
    serve = run_cli("serve", "--help").stdout
    assert "--port" in serve and "--workers" in serve and "--check" in serve
    preannotate = run_cli("preannotate", "--help").stdout
    assert "--project" in preannotate and "--no-wait" in preannotate


def test_model_flags_are_shared_and_default_to_the_config(monkeypatch):
    from dcsam import cli
    from dcsam.cli.model_args import model_config
    from dcsam.config import DEFAULT_BACKBONE, DEFAULT_SAM, SegmenterConfig

    for name in ("DCSAM_ENGINE", "DCSAM_SAM", "DCSAM_BACKBONE", "DCSAM_DEVICE"):
        monkeypatch.delenv(name, raising=False)
    parser = cli.build_parser()
    flags = ["--sam", "vit_b", "--random-weights", "--precision", "bf16", "--offline"]
    common = {
        "sam": "vit_b",
        "random_sam_weights": True,
        "random_backbone_weights": False,
        "precision": "bf16",
        "allow_download": False,
    }
    predict = parser.parse_args(
        ["predict", "--example", "e.jpg", "--example-mask", "e.png", "--out", "o", "q.jpg", *flags]
    )
    video = parser.parse_args(["eval-video", "--davis-root", "d", *flags])
    bench = parser.parse_args(["bench", *flags])
    for args, extra in ((predict, {}), (video, {}), (bench, {"engine": "dcsam"})):
        cfg = model_config(args, **extra)
        assert {k: getattr(cfg, k) for k in common} == common
    assert model_config(bench, engine="dcsam").engine == "dcsam"
    defaults = model_config(parser.parse_args(["eval", "--episodes", "e.json"]))
    assert (defaults.sam, defaults.backbone) == (DEFAULT_SAM, DEFAULT_BACKBONE)
    assert defaults == SegmenterConfig()


def test_serve_help_lists_every_setting_with_its_environment_variable():
    from backend.serve import SERVE_ENV_DOC
    from backend.settings import ENV_DOC

    serve = run_cli("serve", "--help").stdout
    missing = [name for name in (*ENV_DOC, *SERVE_ENV_DOC) if name not in serve]
    assert not missing, missing
    for option, env in (("--host", "$HOST"), ("--port", "$PORT"), ("--workers", "$WORKERS"), ("--threads", "$THREADS")):
        assert option in serve and env in serve


def test_serve_log_lines_carry_a_timestamp(tmp_path):
    proc = run_cli(
        "serve", "--check", env={"DCSAM_ENGINE": "lite", "MODEL_DIR": str(tmp_path / "m"), "LOG_LEVEL": "INFO"}
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert any("serving on" in line for line in lines), proc.stderr
    undated = [line for line in lines if not re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", line)]
    assert not undated, undated


def test_eval_finetune_on_skips_episodes_with_no_query_left(tmp_path):
    rng = np.random.default_rng(0)
    items = []
    for i in range(3):
        img = rng.integers(0, 255, (64, 64, 3)).astype(np.uint8)
        mask = np.zeros((64, 64), np.uint8)
        mask[16:40, 10 + 4 * i : 34 + 4 * i] = 255
        Image.fromarray(img).save(tmp_path / f"{i}.png")
        Image.fromarray(mask).save(tmp_path / f"{i}_m.png")
        items.append({"image": f"{i}.png", "mask": f"{i}_m.png"})
    episodes = tmp_path / "episodes.json"
    episodes.write_text(json.dumps([{"label": "box", "support": [items[0]], "query": items[1:]}]))
    proc = run_cli("eval", "--engine", "lite", "--episodes", episodes, "--finetune-on", "2")
    assert "box" in proc.stdout and "skipped: its 2 queries are all fine-tuning images" in proc.stdout
    assert "queries scored     0" in proc.stdout and "nan" not in proc.stdout.lower()
    proc = run_cli("eval", "--engine", "lite", "--episodes", episodes, "--finetune-on", "3", "--json")
    report = json.loads(proc.stdout)
    assert report["skipped_episodes"] == [{"label": "box", "queries": 2}] and report["mean_iou"] is None
