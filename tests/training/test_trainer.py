"""Training: learning on synthetic data, exact resume, DDP (gloo) equals one process."""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from dcsam.checkpoints import load_checkpoint
from dcsam.training.config import TrainConfig
from dcsam.training.presets import preset
from dcsam.training.trainer import TRAINING_KIND, train

MICRO = {
    "model": {
        "sam": "sam2.1_hiera_t",
        "random_sam_weights": True,
        "image_size": 64,
        "backbone_input_size": 128,
        "sam_image_size": 128,
    },
    "dataset": {"name": "synthetic", "image_size": 64, "length": 16, "val_length": 8, "classes": 4, "distractors": 1},
    "epochs": 2,
    "batch_size": 4,
    "lr": 1e-3,
    "num_workers": 0,
    "val_episodes": 8,
    "seed": 5,
}


def losses(run_dir):
    with open(run_dir / "log.csv") as fh:
        return [(int(r["step"]), r["loss"]) for r in csv.DictReader(fh)]


def train_cli(config, out, batch_size: int, launcher: tuple[str, ...] = ()) -> None:
    """``dcsam train`` in a subprocess (one thread per process), behind ``python -m <launcher>`` if given."""
    args = ["dcsam.cli", "train", "--config", config, "--out", out, "--set", f"batch_size={batch_size}"]
    proc = subprocess.run(
        [sys.executable, "-m", *launcher, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_resume_continues_the_loss_curve_exactly(tmp_path):
    straight = TrainConfig.from_dict({**MICRO, "out_dir": str(tmp_path / "straight")})
    train(straight, progress=False)
    interrupted = TrainConfig.from_dict({**MICRO, "out_dir": str(tmp_path / "resumed")})
    first = train(interrupted, max_steps=4, progress=False)
    assert first["step"] == 4
    second = train(interrupted, resume=True, progress=False)
    assert second["step"] == 8
    a, b = losses(tmp_path / "straight"), losses(tmp_path / "resumed")
    assert [s for s, _ in b] == list(range(1, 9))
    assert a == b  # same loss at every step, to the printed digit
    ckpt = load_checkpoint(tmp_path / "resumed" / "last.pt", TRAINING_KIND)
    assert ckpt["step"] == 8 and ckpt["settings"]["seed"] == 5  # the config travels with the weights


@pytest.mark.slow
def test_two_process_gloo_ddp_equals_one_process(tmp_path):
    base = {**MICRO, "epochs": 1, "model": {**MICRO["model"], "variant": "prior_only"}}  # no dropout draws
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(base))
    train_cli(cfg, tmp_path / "one", batch_size=4)
    train_cli(
        cfg,
        tmp_path / "two",
        batch_size=2,
        launcher=("torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"),
    )
    a = load_checkpoint(tmp_path / "one" / "last.pt", TRAINING_KIND)
    b = load_checkpoint(tmp_path / "two" / "last.pt", TRAINING_KIND)
    assert a["step"] == b["step"] == 4
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.allclose(a["state_dict"][key], b["state_dict"][key], atol=1e-5, rtol=1e-4), key


@pytest.mark.slow
def test_tiny_configuration_learns_on_held_out_episodes(tmp_path):
    config = preset("tiny-synthetic-cpu").with_overrides([f"out_dir={tmp_path}"])
    result = train(config, progress=False)
    with open(tmp_path / "val.csv") as fh:
        rows = list(csv.DictReader(fh))
    # Held-out mIoU before any training, from the same seed and data.
    from dcsam.build import build_dcsam
    from dcsam.config import SegmenterConfig
    from dcsam.data import build_dataset
    from dcsam.training.trainer import evaluate_fewshot

    torch.manual_seed(config.seed)
    untrained = build_dcsam(SegmenterConfig.from_dict({**config.model, "engine": "dcsam"}))
    before = evaluate_fewshot(
        untrained,
        build_dataset(config.dataset, "val"),
        episodes=config.val_episodes,
        seed=config.val_seed,
        batch_size=4,
        device=torch.device("cpu"),
    )["miou"]
    after = result["best_miou"]
    # Measured: 0.296 -> 0.655 (+36 points) with this seed; seeds 1 and 2 (other random SAM weights,
    # seed 2 also other episodes) end at 0.721 and 0.689. The issue asks for +20.
    assert after - before >= 0.20, (before, after, rows)
    # A support-blind model that segments every object scores about 0.53 on these episodes: above
    # that, the model reads the target class off the support (not only "find the shapes").
    assert after >= 0.58, (before, after, rows)
