"""The detection function through cvat-sdk's own driver (``annotate_task``) against a loopback CVAT.

IoU floors were measured first (lite engine, this 2-core CPU) and sit a few points below the figures
(see the README's CVAT section); they catch a broken mapping, encoding or model, not noise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dcsam.errors import InputError
from dcsam.io import read_mask
from dcsam.masks import iou
from tests.support.cvat_server import FakeCvat, task_from_files, uploaded_masks

pytest.importorskip("cvat_sdk", reason="the cvat extra is not installed: pip install -e '.[cvat]'")

OBJECTS = ("cat", "colorful_sneaker", "duck_toy")


def perseg_queries(data_dir: Path) -> list[Path]:
    return [data_dir / "perseg-mini" / f"{name}_{i:02d}.jpg" for name in OBJECTS for i in (1, 2)]


def object_of(frame_name: str) -> str:
    return frame_name.rsplit("_", 1)[0]


# -- fast -------------------------------------------------------------------------------------------------------
def test_shapes_round_trip_through_cvat_encodings():
    from cvat_sdk.masks import decode_mask

    from backend.cvat.shapes import mask_points, nuclio_mask, polygons, shape_mask

    mask = np.zeros((40, 60), bool)
    mask[5:20, 10:30] = True
    mask[30:38, 45:58] = True  # a second part
    points = mask_points(mask)
    assert np.array_equal(decode_mask([int(p) for p in points], image_width=60, image_height=40), mask)
    polys = polygons(mask)
    assert len(polys) == 2 and len(polys[0]) > len(polys[1]) - 100  # two parts, the larger first
    filled = shape_mask("polygon", polys[0], 60, 40) | shape_mask("polygon", polys[1], 60, 40)
    assert iou(filled, mask) > 0.9
    bits = nuclio_mask(mask)
    x1, y1, x2, y2 = bits[-4:]
    assert (x1, y1, x2, y2) == (10, 5, 57, 37)
    crop = np.asarray(bits[:-4], bool).reshape(y2 - y1 + 1, x2 - x1 + 1)
    assert np.array_equal(crop, mask[y1 : y2 + 1, x1 : x2 + 1])
    with pytest.raises(InputError, match="'rectangle' shape has no mask"):
        shape_mask("rectangle", [0, 0, 5, 5], 60, 40)


def test_an_examples_folder_without_masks_is_refused_with_its_layout(tmp_path: Path, data_dir: Path):
    from backend.cvat.examples import folder_examples
    from backend.cvat.func import create

    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "cat_00.jpg").symlink_to(data_dir / "perseg-mini" / "cat_00.jpg")
    with pytest.raises(InputError, match="holds no image with a mask"):
        folder_examples(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        folder_examples(tmp_path / "nowhere")
    with pytest.raises(InputError, match="unknown parameter"):
        create(example=str(tmp_path))
    with pytest.raises(InputError, match="no examples"):
        create(engine="lite")


def test_the_fss_layout_and_mask_suffixes_are_read(tmp_path: Path, data_dir: Path):
    from backend.cvat.examples import folder_examples

    for sub in ("images", "masks"):
        (tmp_path / "fss" / sub / "apple").mkdir(parents=True)
    (tmp_path / "fss" / "images" / "apple" / "1.jpg").symlink_to(data_dir / "fss-mini/images/apple/1.jpg")
    (tmp_path / "fss" / "masks" / "apple" / "1.png").symlink_to(data_dir / "fss-mini/masks/apple/1.png")
    (tmp_path / "fss" / "images" / "apple" / "2.jpg").symlink_to(data_dir / "fss-mini/images/apple/2.jpg")
    [ex] = folder_examples(tmp_path / "fss")
    assert (ex.label, Path(ex.image).name, Path(ex.mask).name) == ("apple", "1.jpg", "1.png")
    (tmp_path / "flat" / "duck").mkdir(parents=True)
    (tmp_path / "flat" / "duck" / "a.png").symlink_to(data_dir / "perseg-mini/duck_toy_00.jpg")
    (tmp_path / "flat" / "duck" / "a_mask.png").symlink_to(data_dir / "perseg-mini/duck_toy_00.png")
    [ex] = folder_examples(tmp_path / "flat")
    assert (ex.label, Path(ex.image).name, Path(ex.mask).name) == ("duck", "a.png", "a_mask.png")


def test_spec_declares_the_examples_labels_as_masks(perseg_detector):
    spec = perseg_detector.spec
    assert [(label.name, label.id, label.type) for label in spec.labels] == [
        (name, i, "mask") for i, name in enumerate(OBJECTS)
    ]


# -- through the SDK's driver ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_annotate_task_masks_every_frame_with_labels_mapped_by_name(perseg_detector, cvat: FakeCvat, client, data_dir):
    from cvat_sdk.auto_annotation import annotate_task

    queries = perseg_queries(data_dir)
    # the task's labels in another order than the function's, with one more the function does not know
    task = task_from_files(cvat, "perseg", ["person", "duck_toy", "cat", "colorful_sneaker"], queries)
    annotate_task(client, task.id, perseg_detector)
    assert ("PATCH", f"/api/tasks/{task.id}/annotations") in cvat.requests
    assert {s["type"] for s in task.shapes} == {"mask"} and {s["source"] for s in task.shapes} == {"auto"}
    masks = uploaded_masks(cvat, task)
    scores = {}
    for frame, path in enumerate(queries):
        name = object_of(path.stem)
        assert (frame, name) in masks, f"no {name} mask on {path.name}"
        scores[path.stem] = iou(masks[(frame, name)], read_mask(path.with_suffix(".png")))
    print("perseg IoU per frame:", {k: round(v, 3) for k, v in scores.items()})
    assert min(scores.values()) > 0.80
    assert np.mean(list(scores.values())) > 0.88
    assert not any(label == "person" for _, label in masks)


@pytest.mark.slow
def test_polygons_when_asked_and_the_threshold_honoured(perseg_detector, cvat: FakeCvat, client, data_dir):
    from cvat_sdk.auto_annotation import annotate_task

    queries = perseg_queries(data_dir)[:2]  # the cat
    task = task_from_files(cvat, "cat", ["cat"], queries)
    annotate_task(client, task.id, perseg_detector, conv_mask_to_poly=True, allow_unmatched_labels=True)
    assert task.shapes and {s["type"] for s in task.shapes} == {"polygon"}
    masks = uploaded_masks(cvat, task)
    for frame, path in enumerate(queries):
        score = iou(masks[(frame, "cat")], read_mask(path.with_suffix(".png")))
        print(f"polygon IoU {path.name}: {score:.3f}")
        assert score > 0.80
    # a threshold above every score leaves the task as it was
    before = len(task.shapes)
    annotate_task(client, task.id, perseg_detector, conf_threshold=1.0, allow_unmatched_labels=True)
    assert len(task.shapes) == before


@pytest.mark.slow
def test_labels_the_task_lacks_are_named_or_skipped(perseg_detector, cvat: FakeCvat, client, data_dir, caplog):
    import logging

    from cvat_sdk.auto_annotation import BadFunctionError, annotate_task

    queries = perseg_queries(data_dir)[:2]
    task = task_from_files(cvat, "cat only", ["cat"], queries)
    with pytest.raises(BadFunctionError, match="colorful_sneaker"):
        annotate_task(client, task.id, perseg_detector)
    assert not task.shapes
    client.logger.propagate = True  # the SDK's report of each skipped label, for caplog
    with caplog.at_level(logging.INFO):
        annotate_task(client, task.id, perseg_detector, allow_unmatched_labels=True)
    reported = caplog.text
    assert "'colorful_sneaker' is not in dataset" in reported and "'duck_toy' is not in dataset" in reported
    assert {cvat.label_name(task, s["label_id"]) for s in task.shapes} == {"cat"}
    assert {s["frame"] for s in task.shapes} == {0, 1}


@pytest.mark.slow
def test_examples_from_the_task_itself_leave_its_example_frames_untouched(
    cvat: FakeCvat, client, data_dir, monkeypatch
):
    from cvat_sdk.auto_annotation import annotate_task

    from backend.cvat.func import create
    from backend.cvat.shapes import mask_points

    paths = [data_dir / "perseg-mini" / f"cat_{i:02d}.jpg" for i in range(3)]
    task = task_from_files(cvat, "cat", ["cat"], paths)
    user_mask = read_mask(paths[0].with_suffix(".png"))
    cvat.add_shape(task, 0, "cat", "mask", mask_points(user_mask))  # the user's label on frame 0
    monkeypatch.setenv("CVAT_HOST", cvat.url)
    monkeypatch.setenv("CVAT_USER", cvat.user)
    monkeypatch.setenv("CVAT_PASSWORD", cvat.password)
    function = create(example_task=task.id, example_frames="0", engine="lite")
    assert function.labels == ["cat"]
    assert create(example_job=task.id, engine="lite").labels == ["cat"]  # the same frame, through its job
    with pytest.raises(InputError, match="has no frame with a mask or polygon"):
        create(example_task=task.id, example_frames="1,2", engine="lite")
    annotate_task(client, task.id, function)
    manual = [s for s in task.shapes if s["source"] == "manual"]
    assert len(manual) == 1 and manual[0]["frame"] == 0
    auto = uploaded_masks(cvat, task)
    assert sorted(auto) == [(1, "cat"), (2, "cat")], "the example frame got a duplicate"
    assert function.skipped == ["cat_00.jpg"]
    for frame in (1, 2):
        assert iou(auto[(frame, "cat")], read_mask(paths[frame].with_suffix(".png"))) > 0.85


@pytest.mark.slow
def test_a_frame_the_model_cannot_use_gets_nothing_and_the_rest_are_annotated(
    perseg_detector, cvat: FakeCvat, client, data_dir, monkeypatch
):
    from cvat_sdk.auto_annotation import annotate_task

    queries = [data_dir / "perseg-mini" / "cat_01.jpg", data_dir / "perseg-mini" / "colorful_sneaker_01.jpg"]
    task = task_from_files(cvat, "cat", ["cat"], queries)
    # frame 1 (2048 x 2048) is over this run's pixel limit; frame 0 (1277 x 1277) is not
    monkeypatch.setattr(perseg_detector.settings, "max_image_pixels", 2_000_000)
    perseg_detector.failed.clear()
    annotate_task(client, task.id, perseg_detector, allow_unmatched_labels=True)
    print(perseg_detector.failed)
    assert {s["frame"] for s in task.shapes} == {0}
    assert list(perseg_detector.failed) == [queries[1].name]
    assert "DCSAM_MAX_IMAGE_PIXELS" in perseg_detector.failed[queries[1].name]


@pytest.mark.slow
def test_cli_task_auto_annotate_on_a_davis_sequence(cvat: FakeCvat, data_dir: Path, tmp_path: Path):
    """``cvat-cli task auto-annotate`` in its own process: frame 0 of car-shadow is the example."""
    import os
    import subprocess
    import sys

    images = data_dir / "davis16-dev" / "JPEGImages" / "car-shadow"
    truth = data_dir / "davis16-dev" / "Annotations" / "car-shadow"
    (tmp_path / "examples" / "car").mkdir(parents=True)
    (tmp_path / "examples" / "car" / "00000.jpg").symlink_to(images / "00000.jpg")
    (tmp_path / "examples" / "car" / "00000.png").symlink_to(truth / "00000.png")
    frames = list(range(5, 40, 5))
    task = task_from_files(cvat, "car-shadow", ["car"], [images / f"{i:05d}.jpg" for i in frames])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "cvat_cli", "--server-host", cvat.url, "--auth", f"{cvat.user}:{cvat.password}"]
    cmd += ["task", "auto-annotate", str(task.id), "--function-module", "backend.cvat.func"]
    cmd += ["-p", f"examples=str:{tmp_path / 'examples'}", "-p", "engine=str:lite"]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    masks = uploaded_masks(cvat, task)
    scores = [iou(masks[(k, "car")], read_mask(truth / f"{i:05d}.png")) for k, i in enumerate(frames)]
    print("car-shadow IoU per frame:", [round(s, 3) for s in scores], "mean", round(float(np.mean(scores)), 3))
    assert min(scores) > 0.70
    assert np.mean(scores) > 0.80


@pytest.mark.slow
def test_agent_mode_registers_the_labels_and_annotates_a_task(cvat: FakeCvat, perseg_examples: Path, data_dir: Path):
    """``cvat-cli function create-native`` + ``run-agent --burst`` (CVAT Online / Enterprise's agents)."""
    import os
    import subprocess
    import sys

    def cli(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "cvat_cli", "--server-host", cvat.url, "--auth", f"{cvat.user}:{cvat.password}"]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        return subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, timeout=600, check=False)

    function = ["--function-module", "backend.cvat.func", "-p", f"examples=str:{perseg_examples}"]
    function += ["-p", "engine=str:lite"]
    made = cli("function", "create-native", "dcsam", *function)
    assert made.returncode == 0, made.stderr[-3000:]
    function_id = int(made.stdout.split()[-1])
    assert [label["name"] for label in cvat.functions[function_id]["labels_v2"]] == list(OBJECTS)
    queries = perseg_queries(data_dir)[:2]
    task = task_from_files(cvat, "cat", ["cat"], queries)
    params = {"type": "annotate_task", "task": task.id, "mapping": {"cat": {"name": "cat"}}}
    cvat.enqueue("whole-task", {**params, "threshold": None, "conv_mask_to_poly": False})
    run = cli("function", "run-agent", str(function_id), *function, "--burst")
    assert run.returncode == 0, run.stderr[-3000:]
    assert not cvat.failed, cvat.failed
    shapes = cvat.completed["whole-task"]["annotations"]["shapes"]
    assert {s["type"] for s in shapes} == {"mask"} and {s["label_id"] for s in shapes} == {task.labels[0]["id"]}
    task.shapes = shapes  # what CVAT stores from the agent's answer
    masks = uploaded_masks(cvat, task)
    for frame, path in enumerate(queries):
        assert iou(masks[(frame, "cat")], read_mask(path.with_suffix(".png"))) > 0.85
