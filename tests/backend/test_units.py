"""Unit tests of the backend's pieces: outputs, label configs, settings, engine choice, state, refinement."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat

import cv2
import numpy as np
import pytest

from backend.engine_select import choose_engine, model_version
from backend.labelstudio.annotations import parse_project_id
from backend.labelstudio.labelconfig import LabelConfigError, parse_label_config
from backend.labelstudio.outputs import BitmaskOutput, BrushOutput, PolygonOutput, annotation_mask
from backend.settings import BackendSettings
from backend.store import Store
from dcsam.masks import iou
from tests.support.configs import INTERACTIVE_CONFIG


def _disc(h=120, w=160, cx=70, cy=60, r=30) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def test_label_config_parsing():
    cfg = parse_label_config(INTERACTIVE_CONFIG)
    assert [c.name for c in cfg.mask_controls] == ["tag"] and cfg.mask_controls[0].labels == ("cat",)
    assert {c.name: c.smart for c in cfg.prompt_controls} == {"kp": True, "box": True}
    assert cfg.images["image"].value_key == "image"
    with pytest.raises(LabelConfigError, match="no mask control"):
        parse_label_config(
            '<View><Image name="i" value="$i"/><BrushLabels name="b" toName="other"><Label value="a"/>'
            "</BrushLabels></View>"
        )
    with pytest.raises(LabelConfigError):
        parse_label_config('<!DOCTYPE x [<!ENTITY a "aaaa">]><View>&a;</View>')


@pytest.mark.parametrize("cls", [BrushOutput, BitmaskOutput, PolygonOutput])
def test_outputs_round_trip(cls):
    from backend.labelstudio.labelconfig import ControlTag

    mask = _disc()
    control = ControlTag("c", cls.type, "image", ("obj",))
    out = cls(control)
    region = out.region(mask, "obj", 0.5)
    assert region["type"] == cls.type and region["value"][cls.type] == ["obj"] and region["score"] == 0.5
    assert (region["original_width"], region["original_height"]) == (160, 120)
    back = out.decode(region)
    if cls is PolygonOutput:
        assert iou(back, mask) > 0.95
    else:
        assert np.array_equal(back, mask)
    assert out.region(np.zeros_like(mask), "obj") is None
    assert np.array_equal(annotation_mask(control, [region, {**region, "from_name": "x"}], "obj"), back)
    assert annotation_mask(control, [region], "other") is None


def test_brush_rle_decodes_with_the_sdk():
    from label_studio_sdk.converter.brush import decode_rle

    from backend.labelstudio.labelconfig import ControlTag

    rng = np.random.default_rng(0)
    mask = _disc() ^ (rng.random((120, 160)) < 0.02)
    region = BrushOutput(ControlTag("c", "brushlabels", "image", ("a",))).region(mask, "a")
    decoded = np.asarray(decode_rle(region["value"]["rle"])).reshape(120, 160, 4)
    assert np.array_equal(decoded[..., 3] > 0, mask)


def test_settings_from_env_and_errors(tmp_path):
    s = BackendSettings.from_env(
        {
            "LABEL_STUDIO_HOST": "http://ls:8080/",
            "LABEL_STUDIO_ACCESS_TOKEN": "t",
            "DCSAM_EXAMPLES_PER_LABEL": "2",
            "DCSAM_ENGINE_OPTIONS": '{"size": 384}',
        }
    )
    assert s.label_studio_url == "http://ls:8080" and s.label_studio_api_key == "t" and s.examples_per_label == 2
    assert s.engine == "auto" and s.engine_options == {"size": 384}
    for bad in (
        {"DCSAM_ENGINE": "sam3"},
        {"LABEL_STUDIO_URL": "ls:8080"},
        {"DCSAM_BATCH_SIZE": "0"},
        {"DCSAM_ENGINE_OPTIONS": "[1]"},
        {"DCSAM_ALLOW_DOWNLOAD": "maybe"},
    ):
        with pytest.raises(ValueError):
            BackendSettings.from_env(bad)


def test_engine_auto_choice_and_version(tmp_path, caplog):
    base = {"DCSAM_CACHE_DIR": str(tmp_path / "cache"), "DCSAM_ALLOW_DOWNLOAD": "0"}
    with caplog.at_level(logging.WARNING):
        choice = choose_engine(BackendSettings.from_env(base), try_download=True)
    assert choice.engine == "lite" and "LITE" in caplog.text
    lite_version = model_version(BackendSettings.from_env(base), choice)
    assert lite_version.startswith("lite-") and lite_version == model_version(BackendSettings.from_env(base), choice)
    # a checkpoint in the cache -> dcsam (nothing loaded here)
    from dcsam.sam_models import SAM_MODELS

    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / SAM_MODELS["sam2.1_hiera_t"].weights.filename).write_bytes(b"x")
    choice = choose_engine(BackendSettings.from_env(base))
    assert choice.engine == "dcsam"
    assert model_version(BackendSettings.from_env(base), choice).startswith("dcsam-sam2.1_hiera_t-coldstart-")
    ckpt = tmp_path / "mine.pt"
    ckpt.write_bytes(b"y")
    assert choose_engine(BackendSettings.from_env({"DCSAM_SAM_CHECKPOINT": str(ckpt)})).sam_checkpoint == str(ckpt)
    with pytest.raises(ValueError, match="no such file"):
        choose_engine(BackendSettings.from_env({"DCSAM_SAM_CHECKPOINT": str(tmp_path / "missing.pt")}))
    assert choose_engine(BackendSettings.from_env({**base, "DCSAM_ENGINE": "lite"})).engine == "lite"


def test_serve_check_resolves_without_starting(tmp_path, monkeypatch, capsys):
    from backend.serve import main

    monkeypatch.setenv("DCSAM_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("DCSAM_ALLOW_DOWNLOAD", "0")
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "m"))
    monkeypatch.setenv("PORT", "9191")
    monkeypatch.delenv("DCSAM_ENGINE", raising=False)
    assert main(["--check"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["engine"] == "lite" and out["port"] == 9191 and out["workers"] == 1 and out["threads"] == 8
    monkeypatch.setenv("WORKERS", "zero")
    with pytest.raises(SystemExit):
        main(["--check"])


def test_state_is_private_and_transactional(tmp_path):
    store = Store(tmp_path)
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    store.projects.save(4, label_config="<View/>", hostname="http://h", access_token="t")
    store.projects.save(4, extra_params={"x": 1})
    assert store.projects.get(4)["access_token"] == "t" and store.projects.get(4)["extra_params"] == {"x": 1}
    assert store.projects.bump_examples_rev(4) == 1 and store.projects.examples_rev(4) == 1
    store.examples.replace(4, [("tag", "cat", 1, 2, "2026")])
    with pytest.raises(sqlite3.IntegrityError):
        store.examples.replace(4, [("tag", "cat", 1, 2, "2026"), ("tag", None, 1, 2, "x")])  # NOT NULL: rollback
    assert [e["annotation_id"] for e in Store(tmp_path).examples.of_project(4)] == [1]
    assert parse_project_id("12.1719999") == 12 and parse_project_id({"id": 3}) == 3 and parse_project_id("x") is None


def test_refine_mask_from_prompts_alone():
    from dcsam.prompting import refine_mask

    gt = _disc(200, 240, 120, 100, 45)
    img = np.full((200, 240, 3), 40, np.uint8)
    img[gt] = (220, 60, 50)
    img = cv2.GaussianBlur(img, (5, 5), 0)
    mask, score = refine_mask(None, img, [(120, 100, True)], None, None)
    assert iou(mask, gt) > 0.85 and score == 1.0
    mask, _ = refine_mask(None, img, [], (60, 40, 180, 160), None)
    assert iou(mask, gt) > 0.85
    assert not mask[:40].any() and not mask[:, :60].any()
    start = gt.copy()
    mask, _ = refine_mask(None, img, [(120, 100, True), (150, 100, False)], None, None, mask=start)
    assert mask[100, 120] and not mask[100, 150]
