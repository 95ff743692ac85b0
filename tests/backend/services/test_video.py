"""Video in the backend: label configs, VideoRectangle tracks, frame-sequence tasks and <Video> tasks
(Flask test client, a fake Label Studio, DAVIS frames and the lite engine)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from backend.labelstudio.labelconfig import LabelConfigError, parse_label_config
from backend.labelstudio.outputs import VideoRectangleOutput, mask_box
from dcsam.masks import iou
from tests.support.configs import SEQUENCE_CONFIG, VIDEO_CONFIG
from tests.support.regions import annotated_task, brush_region, decode_brush
from tests.support.spies import spy_on_tube_finetuning
from tests.support.video import box_iou, davis_frames, keyframe_region, mp4_bytes, sequence_project, track_boxes

# a request that is meant to wait for its <Video> tracks (the default answers within Label Studio's 100 s)
WAIT_FOR_TRACKS = "3600"


def _metric(h, name: str, **labels) -> float:
    text = h.client.get("/metrics").get_data(as_text=True)
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}}"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# -- label config ---------------------------------------------------------------------------------
def _annotated_example_video(fake_ls, data_dir, tmp_path, long_side: int) -> None:
    """Task 1: a 3-frame car-roundabout <Video> whose first frame carries an accepted box keyframe."""
    example = davis_frames(data_dir, "car-roundabout", 3, long_side=long_side)
    fake_ls.files["/data/upload/1/ex.mp4"] = mp4_bytes(tmp_path / "ex.mp4", example)
    region = keyframe_region(example[0][1], 1)
    fake_ls.tasks.append(annotated_task(1, 1, "/data/upload/1/ex.mp4", [region], key="video", annotation_id=11))


def test_video_config_has_tracks_with_labels_and_framerate():
    cfg = parse_label_config(VIDEO_CONFIG)
    assert [c.name for c in cfg.track_controls] == ["box"]
    assert cfg.track_controls[0].labels == ("car", "dog") and cfg.track_controls[0].to_name == "video"
    assert cfg.videos["video"].fps() == 25.0
    cfg = parse_label_config(VIDEO_CONFIG.replace('framerate="25"', 'framerate="$fps"'))
    assert cfg.videos["video"].fps({"fps": "29.97"}) == pytest.approx(29.97)
    assert cfg.videos["video"].fps({}) == 24.0  # Label Studio's default


@pytest.mark.parametrize(
    "xml, message",
    [
        ('<View><Video name="video" value="$video"/><VideoRectangle name="box" toName="video"/></View>', "Labels"),
        (
            '<View><Video name="video" value="$video"/>'
            '<Labels name="l" toName="video"><Label value="a"/></Labels></View>',
            "VideoRectangle",
        ),
    ],
)
def test_video_configs_without_tracks_or_labels_are_refused(xml, message):
    with pytest.raises(LabelConfigError, match=message):
        parse_label_config(xml)


# -- VideoRectangle tracks --------------------------------------------------------------------------
def test_track_keyframes_are_one_based_end_disabled_and_interpolate_within_tolerance():
    cfg = parse_label_config(VIDEO_CONFIG)
    out = VideoRectangleOutput(cfg.track_controls[0], tolerance=0.5)
    rng = np.random.default_rng(0)
    boxes = [None, None] + [(10 + i * 0.7 + rng.normal(0, 0.05), 20.0, 30.0 + (i % 7), 40.0) for i in range(30)]
    boxes += [None] * 5 + [(50.0, 50.0, 10.0, 10.0)] + [None]
    region = out.region(boxes, "car", 0.9, framerate=25.0)
    value = region["value"]
    assert region["type"] == "videorectangle" and region["from_name"] == "box" and region["to_name"] == "video"
    assert value["labels"] == ["car"] and value["framesCount"] == len(boxes)
    assert value["duration"] == pytest.approx(len(boxes) / 25.0)
    seq = value["sequence"]
    assert seq[0]["frame"] == 3 and seq[0]["enabled"] is True  # decoded frame 2 is Label Studio's frame 3
    ends = [kf["frame"] for kf in seq if not kf["enabled"]]
    assert ends == [32, 38]  # each visible stretch ends (disabled) on its last frame
    assert all(kf["time"] == pytest.approx(kf["frame"] / 25.0) for kf in seq)
    assert len(seq) < 30  # frames Label Studio interpolates are left out
    # Label Studio's linear interpolation between kept keyframes reproduces every box within the tolerance
    first_run = [kf for kf in seq if kf["frame"] <= 32]
    for f in range(3, 33):
        a = max((kf for kf in first_run if kf["frame"] <= f), key=lambda kf: kf["frame"])
        b = min((kf for kf in first_run if kf["frame"] >= f), key=lambda kf: kf["frame"])
        t = 0.0 if a is b else (f - a["frame"]) / (b["frame"] - a["frame"])
        for k, prop in enumerate(("x", "y", "width", "height")):
            assert abs(a[prop] + t * (b[prop] - a[prop]) - boxes[f - 1][k]) <= 0.5 + 1e-3
    assert out.region([None, None], "car", 0.9, 25.0) is None
    assert out.first_box([region], "car") == (2, tuple(seq[0][p] for p in ("x", "y", "width", "height")))
    assert out.first_box([region], "dog") is None


def test_mask_box_in_percent():
    m = np.zeros((50, 200), bool)
    m[10:20, 40:60] = True
    assert mask_box(m) == pytest.approx((20.0, 20.0, 10.0, 20.0))
    assert mask_box(np.zeros((5, 5), bool)) is None


# -- frame-sequence image tasks ---------------------------------------------------------------------


def test_one_frame_request_propagates_the_video_once_and_caches_the_rest(harness_factory, fake_ls, data_dir):
    frames = davis_frames(data_dir, "car-shadow", 10)
    tasks = sequence_project(fake_ls, frames, "car-shadow", 100)
    h = harness_factory(LABEL_STUDIO_URL=fake_ls.url, LABEL_STUDIO_API_KEY=fake_ls.api_key)
    r = h.predict(1, SEQUENCE_CONFIG, [tasks[6]])
    assert r.status_code == 200
    [pred] = r.json["results"]
    assert iou(decode_brush(pred["result"][0]), frames[6][1]) > 0.7
    assert _metric(h, "dcsam_video_propagations_total", kind="sequence") == 1
    downloads = sum(1 for q in fake_ls.requests if q.path.startswith("/data/upload/"))
    # the other frames come from the cache: no new propagation, no download
    r = h.predict(1, SEQUENCE_CONFIG, tasks[1:6] + tasks[7:])
    ious = [
        iou(decode_brush(p["result"][0]), frames[i][1])
        for i, p in zip([*range(1, 6), *range(7, 10)], r.json["results"])
    ]
    assert min(ious) > 0.7, ious
    assert _metric(h, "dcsam_video_propagations_total", kind="sequence") == 1
    assert sum(1 for q in fake_ls.requests if q.path.startswith("/data/upload/")) == downloads
    assert _metric(h, "dcsam_video_frames_total", kind="sequence") == 10


def test_data_keys_are_configurable_and_a_new_annotation_starts_a_new_propagation(harness_factory, fake_ls, data_dir):
    frames = davis_frames(data_dir, "car-shadow", 8)
    tasks = sequence_project(fake_ls, frames, "clip-7", 200, key="clip", frame_key="t")
    h = harness_factory(
        LABEL_STUDIO_URL=fake_ls.url,
        LABEL_STUDIO_API_KEY=fake_ls.api_key,
        DCSAM_VIDEO_KEY="clip",
        DCSAM_FRAME_KEY="t",
        DCSAM_EXAMPLES_RECHECK_S="0",
    )
    h.predict(1, SEQUENCE_CONFIG, [tasks[3]])
    assert _metric(h, "dcsam_video_propagations_total", kind="sequence") == 1
    # an annotator corrects frame 7: frames 4..7 now follow it (they are nearer to it than to frame 0)
    shifted = np.roll(frames[7][1], 30, axis=1)
    fake_ls.tasks[7]["annotations"] = [
        {
            "id": 9001,
            "result": [brush_region(shifted, "car")],
            "was_cancelled": False,
            "updated_at": "2026-11-02T10:00:00Z",
            "task": 207,
            "project": 1,
        }
    ]
    r = h.predict(1, SEQUENCE_CONFIG, [tasks[7], tasks[1]])
    assert _metric(h, "dcsam_video_propagations_total", kind="sequence") == 2
    got7, got1 = (decode_brush(p["result"][0]) for p in r.json["results"])
    assert iou(got7, shifted) > 0.95  # the annotated frame keeps its annotation
    assert iou(got1, frames[1][1]) > 0.7


def test_each_annotated_frame_owns_its_nearest_frames_and_the_requested_ones_go_first():
    from backend.services.video import segments

    anchors = [(2, {}), (10, {}), (20, {})]
    assert segments(anchors, 30, set()) == [(0, 2, 0, 7), (1, 10, 7, 16), (2, 20, 16, 30)]
    assert segments(anchors, 30, {25}) == [(2, 20, 16, 30), (0, 2, 0, 7), (1, 10, 7, 16)]
    assert segments([], 5, {3}) == [(0, 0, 0, 5)]  # no annotated frame: from frame 0, predicted in context


def test_a_broken_frame_fails_that_task_only(harness_factory, fake_ls, data_dir):
    frames = davis_frames(data_dir, "car-shadow", 6)
    tasks = sequence_project(fake_ls, frames, "car-shadow", 300)
    fake_ls.files[tasks[3]["data"]["image"]] = b"not an image"
    h = harness_factory(LABEL_STUDIO_URL=fake_ls.url, LABEL_STUDIO_API_KEY=fake_ls.api_key)
    r = h.predict(1, SEQUENCE_CONFIG, tasks)
    results = r.json["results"]
    assert results[3] == []  # no prediction: Label Studio asks again
    assert all(results[i]["result"] for i in (0, 1, 2, 4, 5))
    assert iou(decode_brush(results[5]["result"][0]), frames[5][1]) > 0.6


def test_a_video_without_annotation_is_segmented_from_another_videos_example(harness_factory, fake_ls, data_dir):
    example = davis_frames(data_dir, "car-roundabout", 1)
    sequence_project(fake_ls, example, "car-roundabout", 400)
    frames = davis_frames(data_dir, "car-shadow", 6)
    tasks = sequence_project(fake_ls, frames, "car-shadow", 500, annotate=())
    plain = {"id": 600, "project": 1, "data": {"image": tasks[0]["data"]["image"]}}  # an ordinary image task
    h = harness_factory(LABEL_STUDIO_URL=fake_ls.url, LABEL_STUDIO_API_KEY=fake_ls.api_key)
    r = h.predict(1, SEQUENCE_CONFIG, [tasks[4], plain])
    seq, single = r.json["results"]
    assert iou(decode_brush(seq["result"][0]), frames[4][1]) > 0.6
    assert iou(decode_brush(single["result"][0]), frames[0][1]) > 0.6
    assert _metric(h, "dcsam_video_propagations_total", kind="sequence") == 1


# -- <Video> tasks ----------------------------------------------------------------------------------


def test_video_task_tracks_from_its_own_keyframe(harness_factory, fake_ls, data_dir, tmp_path):
    frames = davis_frames(data_dir, "car-shadow", 10, long_side=854)  # a keyframe box becomes a mask by GrabCut: 480p
    fake_ls.files["/data/upload/1/car.mp4"] = mp4_bytes(tmp_path / "car.mp4", frames)
    task = {
        "id": 1,
        "project": 1,
        "data": {"video": "/data/upload/1/car.mp4"},
        "annotations": [
            {
                "id": 11,
                "result": [keyframe_region(frames[3][1], 4)],
                "was_cancelled": False,
                "updated_at": "2026-11-01T10:00:00Z",
            }
        ],
    }
    fake_ls.tasks.append(task)
    h = harness_factory(
        LABEL_STUDIO_URL=fake_ls.url, LABEL_STUDIO_API_KEY=fake_ls.api_key, DCSAM_VIDEO_TASK_WAIT_S=WAIT_FOR_TRACKS
    )
    r = h.predict(1, VIDEO_CONFIG, [{"id": 1, "project": 1, "data": task["data"]}])  # annotations read from the API
    assert r.status_code == 200
    [pred] = r.json["results"]
    [region] = pred["result"]
    assert region["type"] == "videorectangle" and region["value"]["labels"] == ["car"]
    assert region["value"]["framesCount"] == 10
    got = track_boxes(region, 10)
    ious = [box_iou(g, mask_box(m)) for g, (_, m) in zip(got, frames)]
    assert min(ious) > 0.7, ious  # every frame, before and after the keyframe
    assert _metric(h, "dcsam_video_propagations_total", kind="video") == 1


def test_video_task_from_another_videos_keyframe_example_and_broken_video(harness_factory, fake_ls, data_dir, tmp_path):
    _annotated_example_video(fake_ls, data_dir, tmp_path, long_side=854)
    frames = davis_frames(data_dir, "car-shadow", 6, long_side=854)
    fake_ls.files["/data/upload/1/q.mp4"] = mp4_bytes(tmp_path / "q.mp4", frames)
    fake_ls.files["/data/upload/1/bad.mp4"] = b"\x00\x00\x00 not a video"
    h = harness_factory(
        LABEL_STUDIO_URL=fake_ls.url, LABEL_STUDIO_API_KEY=fake_ls.api_key, DCSAM_VIDEO_TASK_WAIT_S=WAIT_FOR_TRACKS
    )
    tasks = [
        {"id": 2, "project": 1, "data": {"video": "/data/upload/1/bad.mp4"}, "annotations": []},
        {"id": 3, "project": 1, "data": {"video": "/data/upload/1/q.mp4"}, "annotations": []},
    ]
    bad, good = h.predict(1, VIDEO_CONFIG, tasks).json["results"]
    assert bad == []  # no prediction: Label Studio asks again
    [region] = good["result"]
    got = track_boxes(region, 6)
    ious = [box_iou(g, mask_box(m)) for g, (_, m) in zip(got, frames)]
    assert np.mean(ious) > 0.6


# -- fine-tuning from accepted frames: mask tubes -----------------------------------------------------
def test_training_a_frame_sequence_project_uses_mask_tubes(harness_factory, fake_ls, data_dir, monkeypatch):
    fake_ls.label_configs[1] = SEQUENCE_CONFIG
    for video, first_id in (("car-shadow", 100), ("car-roundabout", 200)):
        frames = davis_frames(data_dir, video, 6)
        sequence_project(fake_ls, frames, video, first_id, annotate=(0, 2, 4))
    seen = spy_on_tube_finetuning(monkeypatch)
    h = harness_factory(
        LABEL_STUDIO_URL=fake_ls.url,
        LABEL_STUDIO_API_KEY=fake_ls.api_key,
        DCSAM_TRAIN_STEPS="2",
        DCSAM_PREANNOTATE_AFTER_TRAIN="0",
    )
    r = h.client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}})
    assert h.service.runner.wait_idle(300)
    job = h.client.get(f"/jobs/{r.json['job']}").json
    assert job["status"] == "done", job
    assert job["figures"]["tubes"] == 2  # one tube per video (label car)
    # every fine-tuning run trained on tubes; the last one on every annotated frame: 3 per video, in order
    assert seen and seen[-1] == [("tag\x1fcar", 3), ("tag\x1fcar", 3)]


def test_frame_sequences_with_sam2_memory_propagation(harness_factory, fake_ls, data_dir):
    """Plumbing of the SAM 2 path (random-weight SAM 2.1 tiny, so the masks themselves mean nothing): every
    frame is propagated without error, in one propagation, and answered in order."""
    from dcsam.sam_models import build_sam_model

    frames = davis_frames(data_dir, "car-shadow", 5)
    tasks = sequence_project(fake_ls, frames, "car-shadow", 700)
    h = harness_factory(
        LABEL_STUDIO_URL=fake_ls.url, LABEL_STUDIO_API_KEY=fake_ls.api_key, DCSAM_VIDEO_PROPAGATION="sam2"
    )
    h.service.predictor.video.sam2_model = build_sam_model("sam2.1_hiera_t", random_weights=True, image_size=256)
    r = h.predict(1, SEQUENCE_CONFIG, tasks[1:])
    assert r.status_code == 200 and len(r.json["results"]) == 4
    assert _metric(h, "dcsam_video_propagations_total", kind="sequence") == 1
    run = h.service.predictor.video.sequence_runs()[-1]
    with run.cond:  # the request returned with its frames; the run's bookkeeping may still be closing
        assert run.cond.wait_for(lambda: run.finished, timeout=60)
    assert sorted(run.outcomes) == [t["id"] for t in tasks]
    assert all(o.error is None for o in run.outcomes.values()), run.outcomes
    assert h.service.predictor.video.video_segmenter(h.service.examples.project(1).segmenter).propagation == "sam2"
    assert _metric(h, "dcsam_task_errors_total", kind="video") == 0


def test_preannotation_job_over_frame_sequences_and_video_tasks(harness_factory, fake_ls, data_dir, tmp_path):
    """A pre-annotation job (pages of 4 tasks) over two frame-sequence videos and a <Video> task project."""
    fake_ls.label_configs[1] = SEQUENCE_CONFIG
    a = sequence_project(fake_ls, davis_frames(data_dir, "car-shadow", 7), "car-shadow", 100)
    b = sequence_project(fake_ls, davis_frames(data_dir, "car-roundabout", 5), "car-roundabout", 200, annotate=())
    h = harness_factory(
        LABEL_STUDIO_URL=fake_ls.url,
        LABEL_STUDIO_API_KEY=fake_ls.api_key,
        DCSAM_PREANNOTATE_CHUNK="4",
        DCSAM_PREANNOTATE_BACKOFF_S="0",
    )
    r = h.client.post("/jobs/preannotate", json={"project": 1})
    assert h.service.runner.wait_idle(300)
    job = h.client.get(f"/jobs/{r.json['id']}").json
    assert job["status"] == "done" and job["figures"]["failed"] == 0, job
    assert fake_ls.predictions_per_task(h.service.version) == {t["id"]: 1 for t in a + b}
    assert _metric(h, "dcsam_video_propagations_total", kind="sequence") == 2  # once per video, across pages
    # <Video> tasks in another project
    fake_ls.label_configs[2] = VIDEO_CONFIG
    frames = davis_frames(data_dir, "car-shadow", 4, long_side=426)
    fake_ls.files["/data/upload/2/a.mp4"] = mp4_bytes(tmp_path / "a.mp4", frames)
    fake_ls.tasks.append(
        annotated_task(
            900, 2, "/data/upload/2/a.mp4", [keyframe_region(frames[0][1], 1)], key="video", annotation_id=91
        )
    )
    fake_ls.tasks.append({"id": 901, "project": 2, "data": {"video": "/data/upload/2/a.mp4"}, "annotations": []})
    r = h.client.post("/jobs/preannotate", json={"project": 2})
    assert h.service.runner.wait_idle(300)
    job = h.client.get(f"/jobs/{r.json['id']}").json
    assert job["status"] == "done" and job["figures"]["failed"] == 0, job
    tracks = [p for p in fake_ls.predictions if p["task"] in (900, 901)]
    assert len(tracks) == 2 and all(p["result"][0]["type"] == "videorectangle" for p in tracks)


class GatedFiles(dict):
    """``fake_ls.files`` whose ``gated`` paths are served only once ``gate`` is set: slow video downloads."""

    def __init__(self, files: dict, gated: set[str], gate: threading.Event):
        super().__init__(files)
        self.gated, self.gate = gated, gate

    def get(self, key, default=None):
        if key in self.gated:
            self.gate.wait(120)
        return super().get(key, default)


def test_video_tasks_are_tracked_in_the_background_and_then_served_from_the_cache(
    harness_factory, fake_ls, data_dir, tmp_path
):
    """Issue 14 item 9: /predict never holds Label Studio's request for a whole propagation. A request
    starts every <Video> task's track and answers, after DCSAM_VIDEO_TASK_WAIT_S, with no prediction ([])
    for the unfinished ones; the next request, and a pre-annotation job, get the cached tracks."""
    _annotated_example_video(fake_ls, data_dir, tmp_path, long_side=426)
    clips = {name: davis_frames(data_dir, name, 4, long_side=426) for name in ("car-shadow", "car-roundabout")}
    tasks = []
    for task_id, (name, frames) in enumerate(clips.items(), start=2):
        ref = f"/data/upload/1/{name}.mp4"
        fake_ls.files[ref] = mp4_bytes(tmp_path / f"{name}.mp4", frames)
        tasks.append({"id": task_id, "project": 1, "data": {"video": ref}, "annotations": []})
    gate = threading.Event()  # the two videos' downloads wait for it: their tracks cannot be done early
    fake_ls.files = GatedFiles(fake_ls.files, {t["data"]["video"] for t in tasks}, gate)
    h = harness_factory(
        LABEL_STUDIO_URL=fake_ls.url, LABEL_STUDIO_API_KEY=fake_ls.api_key, DCSAM_VIDEO_TASK_WAIT_S="0.5"
    )
    first = h.predict(1, VIDEO_CONFIG, tasks)
    assert first.status_code == 200 and first.json["results"] == [[], []]  # one element per task, no prediction
    runs = h.service.predictor.video.track_runs()
    assert len(runs) == 2 and not any(r.done.is_set() for r in runs)  # both started, both still running
    gate.set()
    assert all(r.done.wait(600) for r in runs)
    second = h.predict(1, VIDEO_CONFIG, tasks)
    for pred, frames in zip(second.json["results"], clips.values()):
        [region] = pred["result"]
        assert region["type"] == "videorectangle" and region["value"]["framesCount"] == len(frames)
    assert _metric(h, "dcsam_video_propagations_total", kind="video") == 2  # the second request ran none
    # a pre-annotation job takes the cached tracks too (the example's own task is tracked anew: one more)
    fake_ls.label_configs[1] = VIDEO_CONFIG
    fake_ls.tasks.extend({**t, "annotations": []} for t in tasks)
    r = h.client.post("/jobs/preannotate", json={"project": 1})
    assert h.service.runner.wait_idle(600)
    job = h.client.get(f"/jobs/{r.json['id']}").json
    assert job["status"] == "done" and job["figures"]["failed"] == 0, job
    assert fake_ls.predictions_per_task(h.service.version) == {1: 1, 2: 1, 3: 1}
    assert _metric(h, "dcsam_video_propagations_total", kind="video") == 3


def test_a_failed_track_is_not_cached(harness_factory, fake_ls, data_dir, tmp_path):
    """A transient failure (the video was not there yet) must not stick: the next request tracks again."""
    _annotated_example_video(fake_ls, data_dir, tmp_path, long_side=426)
    task = {"id": 2, "project": 1, "data": {"video": "/data/upload/1/late.mp4"}, "annotations": []}
    h = harness_factory(
        LABEL_STUDIO_URL=fake_ls.url, LABEL_STUDIO_API_KEY=fake_ls.api_key, DCSAM_VIDEO_TASK_WAIT_S=WAIT_FOR_TRACKS
    )
    assert h.predict(1, VIDEO_CONFIG, [task]).json["results"] == [[]]  # HTTP 404: no prediction
    frames = davis_frames(data_dir, "car-shadow", 4, long_side=426)
    fake_ls.files["/data/upload/1/late.mp4"] = mp4_bytes(tmp_path / "late.mp4", frames)
    [pred] = h.predict(1, VIDEO_CONFIG, [task]).json["results"]
    assert pred["result"][0]["type"] == "videorectangle"


def test_a_track_the_model_changes_under_is_not_served_and_is_tracked_again(
    harness_factory, fake_ls, data_dir, tmp_path, monkeypatch, caplog
):
    """A promotion (or rollback) landing mid-track must not give one track two models' frames under one
    model_version: the track stops with no prediction, and the next request tracks with the new model."""
    _annotated_example_video(fake_ls, data_dir, tmp_path, long_side=426)
    frames = davis_frames(data_dir, "car-shadow", 4, long_side=426)
    fake_ls.files["/data/upload/1/q.mp4"] = mp4_bytes(tmp_path / "q.mp4", frames)
    task = {"id": 2, "project": 1, "data": {"video": "/data/upload/1/q.mp4"}, "annotations": []}
    h = harness_factory(
        LABEL_STUDIO_URL=fake_ls.url, LABEL_STUDIO_API_KEY=fake_ls.api_key, DCSAM_VIDEO_TASK_WAIT_S=WAIT_FOR_TRACKS
    )
    video = h.service.predictor.video
    prepare, steps = video.prepare, []

    def promoted_after_two_frames(project_id):
        steps.append(project_id)
        served = prepare(project_id)
        return served if len(steps) <= 2 else f"{served}-promoted"

    monkeypatch.setattr(video, "prepare", promoted_after_two_frames)
    with caplog.at_level("INFO"):
        assert h.predict(1, VIDEO_CONFIG, [task]).json["results"] == [[]]
    assert len(steps) == 3  # two frames, then the change is seen and the track stops
    assert "the model changed from" in caplog.text
    monkeypatch.setattr(video, "prepare", prepare)
    [pred] = h.predict(1, VIDEO_CONFIG, [task]).json["results"]
    [region] = pred["result"]
    assert region["type"] == "videorectangle" and region["value"]["framesCount"] == 4


def test_a_frame_sequence_request_answers_within_its_wait_and_a_job_waits_for_every_frame(
    harness_factory, fake_ls, data_dir
):
    """A /predict request waits at most DCSAM_VIDEO_WAIT_S for its frames (Label Studio gives up after 100 s):
    frames not done by then get no prediction and the propagation goes on; a pre-annotation job waits for them."""
    frames = davis_frames(data_dir, "car-shadow", 4)
    tasks = sequence_project(fake_ls, frames, "car-shadow", 100)
    fake_ls.label_configs[1] = SEQUENCE_CONFIG
    gate = threading.Event()  # the last two frames download only once it is set: the propagation cannot finish
    fake_ls.files = GatedFiles(fake_ls.files, {t["data"]["image"] for t in tasks[2:]}, gate)
    h = harness_factory(
        LABEL_STUDIO_URL=fake_ls.url,
        LABEL_STUDIO_API_KEY=fake_ls.api_key,
        DCSAM_VIDEO_WAIT_S="1",
        DCSAM_PREANNOTATE_BACKOFF_S="0",
    )
    r = h.predict(1, SEQUENCE_CONFIG, [tasks[3]])
    assert r.status_code == 200 and r.json["results"] == [[]]  # no prediction yet: Label Studio asks again
    r = h.client.post("/jobs/preannotate", json={"project": 1})
    # the job outwaits the request's limit: the frames arrive well after it
    threading.Timer(3.0, gate.set).start()
    assert h.service.runner.wait_idle(600)
    job = h.client.get(f"/jobs/{r.json['id']}").json
    assert job["status"] == "done" and job["figures"]["failed"] == 0, job
    assert fake_ls.predictions_per_task(h.service.version) == {t["id"]: 1 for t in tasks}
    assert _metric(h, "dcsam_video_propagations_total", kind="sequence") == 1  # the request's run, reused
