"""End-to-end video with a real Label Studio 1.23.2 and `dcsam serve` (lite engine) over loopback.

1. Frame-sequence image tasks (data: image, video, frame): one annotated frame of car-shadow; Label Studio
   asks for one frame, the backend propagates the whole video once and serves its other frames from the
   cache; car-roundabout (no annotation) is segmented from the car-shadow example.
2. <Video> tasks (mp4 uploads, VideoRectangle + Labels): a keyframe box on one video; tracks are predicted
   for it and for another video, stored by Label Studio and compared with the ground-truth boxes. Tracks are
   computed in the background: each Retrieve Predictions is answered within DCSAM_VIDEO_TASK_WAIT_S, with no
   prediction for a track still running, and is repeated (as a person would) until both tracks are stored.
"""

from __future__ import annotations

import re
import time

import cv2
import numpy as np
import pytest

from backend.labelstudio.outputs import mask_box
from dcsam.masks import iou
from tests.support.configs import SEQUENCE_CONFIG, VIDEO_CONFIG
from tests.support.label_studio import LEGACY_TOKEN, Backend, LabelStudio
from tests.support.regions import brush_result, decode_brush
from tests.support.video import box_iou, davis_frames, keyframe_region, mp4_bytes, track_boxes

pytestmark = pytest.mark.slow


def _metric(backend: Backend, name: str, **labels) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in backend.get("/metrics").text.splitlines():
        if line.startswith(f"{name}{{{want}}}"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _latest_prediction(ls: LabelStudio, task_id: int) -> dict:
    preds = ls.predictions(task_id)
    assert preds, f"task {task_id} has no prediction"
    return max(preds, key=lambda p: p["id"])


def test_frame_sequence_tasks(ls, workdir, data_dir):
    videos = {
        "car-shadow": davis_frames(data_dir, "car-shadow", 24),
        "car-roundabout": davis_frames(data_dir, "car-roundabout", 12),
    }
    folder = workdir / "sequence"
    folder.mkdir()
    paths = []
    for video, frames in videos.items():
        for i, (img, _) in enumerate(frames):
            paths.append(folder / f"{video}_{i:05d}.jpg")
            cv2.imwrite(str(paths[-1]), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    project = ls.create_project("E2E frame sequences", SEQUENCE_CONFIG)
    stems = ls.upload_many(project, paths)
    ids: dict[tuple[str, int], int] = {}
    for stem, task_id in stems.items():
        video, index = stem.rsplit("_", 1)
        ids[(video, int(index))] = task_id
        task = ls.call("GET", f"/api/tasks/{task_id}").json()
        # frame numbers as a frame extractor writes them (every 5th frame of the original)
        ls.call(
            "PATCH", f"/api/tasks/{task_id}", json={"data": {**task["data"], "video": video, "frame": int(index) * 5}}
        )
    ls.annotate(ids[("car-shadow", 0)], brush_result(videos["car-shadow"][0][1], "car"))
    backend = Backend(
        workdir,
        "sequence",
        LABEL_STUDIO_URL=ls.url,
        LABEL_STUDIO_API_KEY=LEGACY_TOKEN,
        DCSAM_ENGINE="lite",
        DCSAM_ENGINE_OPTIONS='{"size": 256}',
    )
    try:
        ls.connect_backend(project, backend.url)
        # Label Studio asks for one frame in the middle: the whole video is propagated once
        ls.retrieve_predictions(project, [ids[("car-shadow", 12)]])
        assert _metric(backend, "dcsam_video_propagations_total", kind="sequence") == 1
        others = [ids[("car-shadow", i)] for i in range(1, 24) if i != 12]
        ls.retrieve_predictions(project, others)
        assert _metric(backend, "dcsam_video_propagations_total", kind="sequence") == 1  # from the cache
        shadow = []
        for i in range(1, 24):
            pred = _latest_prediction(ls, ids[("car-shadow", i)])
            [region] = pred["result"]
            assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["car"]
            shadow.append(iou(decode_brush(region), videos["car-shadow"][i][1]))
        # the other video has no annotated frame: the car-shadow example conditions its first frame
        ls.retrieve_predictions(project, [ids[("car-roundabout", i)] for i in range(12)])
        assert _metric(backend, "dcsam_video_propagations_total", kind="sequence") == 2
        roundabout = [
            iou(
                decode_brush(_latest_prediction(ls, ids[("car-roundabout", i)])["result"][0]),
                videos["car-roundabout"][i][1],
            )
            for i in range(12)
        ]
        print(
            f"\nframe sequences (240 px, lite): car-shadow from its frame 0: mean IoU {np.mean(shadow):.3f} "
            f"(min {min(shadow):.3f}); car-roundabout from the car-shadow example: {np.mean(roundabout):.3f} "
            f"(min {min(roundabout):.3f})"
        )
        assert np.mean(shadow) > 0.8 and min(shadow) > 0.6
        assert np.mean(roundabout) > 0.6
    finally:
        backend.close()


def test_video_tasks_get_videorectangle_tracks(ls, workdir, data_dir):
    folder = workdir / "videos"
    folder.mkdir()
    clips = {
        "car-roundabout": davis_frames(data_dir, "car-roundabout", 12, long_side=854),  # DAVIS frames are 854x480
        "car-shadow": davis_frames(data_dir, "car-shadow", 24, long_side=854),
    }
    project = ls.create_project("E2E video tracks", VIDEO_CONFIG)
    for video, frames in clips.items():
        path = folder / f"{video}.mp4"
        mp4_bytes(path, frames)
        with open(path, "rb") as fh:
            r = ls.call("POST", f"/api/projects/{project}/import", files={"file": (path.name, fh, "video/mp4")})
        assert r.json()["task_count"] == 1
    tasks = {
        re.sub(r"^[0-9a-f]{8}-", "", t["data"]["video"].rsplit("/", 1)[-1]).rsplit(".", 1)[0]: t["id"]
        for t in ls.all_tasks(project)
    }
    assert set(tasks) == set(clips), tasks
    # one keyframe box on frame 3 of car-roundabout, as the editor saves it
    keyframe = keyframe_region(clips["car-roundabout"][2][1], 3)
    keyframe["value"].update(framesCount=12, duration=12 / 25)
    ls.annotate(tasks["car-roundabout"], [keyframe])
    backend = Backend(workdir, "video", LABEL_STUDIO_URL=ls.url, LABEL_STUDIO_API_KEY=LEGACY_TOKEN, DCSAM_ENGINE="lite")
    try:
        ls.connect_backend(project, backend.url)
        ids = [tasks["car-roundabout"], tasks["car-shadow"]]
        offset = ls.log_size()
        rounds, deadline = 0, time.monotonic() + 1200
        while True:  # Label Studio only asks again for the tasks it holds no prediction of this version for
            ls.retrieve_predictions(project, ids)
            rounds += 1
            if all(ls.predictions(t) for t in ids):
                break
            assert time.monotonic() < deadline, f"no tracks after {rounds} Retrieve Predictions"
            time.sleep(2)
        # every /predict answered Label Studio in time: it logs any failed ML call (a timeout) as an error
        assert "Error occurred" not in ls.log_since(offset), ls.log_since(offset)[-3000:]
        assert backend.log.read_text().count(f"/predict project {project}: ") >= rounds
        # each video tracked exactly once, however many requests asked for it while it ran
        assert _metric(backend, "dcsam_video_propagations_total", kind="video") == 2
        assert all(len(ls.predictions(t)) == 1 for t in ids)
        print(f"\n<Video> tracks stored after {rounds} Retrieve Predictions")
        figures = {}
        for video, frames in clips.items():
            pred = _latest_prediction(ls, tasks[video])
            [region] = pred["result"]
            assert region["type"] == "videorectangle" and region["from_name"] == "box" and region["to_name"] == "video"
            value = region["value"]
            assert value["labels"] == ["car"] and value["framesCount"] == len(frames)
            seq = value["sequence"]
            assert seq[0]["frame"] == 1 and seq[-1]["enabled"] is False and all(kf["frame"] >= 1 for kf in seq)
            assert all(kf["time"] == pytest.approx(kf["frame"] / 25.0) for kf in seq)  # framerate="25"
            boxes = track_boxes(region, len(frames))
            figures[video] = [box_iou(b, mask_box(m)) for b, (_, m) in zip(boxes, frames)]
            figures[video + " keyframes"] = len(seq)
        print(
            "\n<Video> tracks, box IoU per frame vs ground truth: "
            + "; ".join(
                f"{k}: mean {np.mean(v):.3f}, min {min(v):.3f}" for k, v in figures.items() if isinstance(v, list)
            )
            + f"; keyframes {figures['car-roundabout keyframes']} / {figures['car-shadow keyframes']}"
        )
        assert np.mean(figures["car-roundabout"]) > 0.7  # from its own keyframe
        assert np.mean(figures["car-shadow"]) > 0.6  # from the other video's keyframe example
    finally:
        backend.close()
