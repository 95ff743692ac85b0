"""Lite-engine video propagation: quality on davis16-dev, the streaming API, mask tubes."""

import numpy as np
import pytest

from dcsam import InContextSegmenter, InputError, LabelledImage
from dcsam.io import read_image, read_mask
from dcsam.masks import iou
from dcsam.video import VideoSegmenter
from dcsam.video.lite import LitePropagator
from dcsam.video.tubes import MaskTube, lite_tube_episodes, pseudo_tube, tube_from_video
from dcsam.video.vos_evaluation import davis_samples, evaluate_videos


@pytest.fixture(scope="module")
def lite():
    return InContextSegmenter.from_config(engine="lite")


def davis(data_dir, seq, i, what="JPEGImages"):
    ext = "jpg" if what == "JPEGImages" else "png"
    return str(data_dir / "davis16-dev" / what / seq / f"{i:05d}.{ext}")


def test_davis_quality_two_sequences(lite, data_dir):
    """DAVIS protocol, first 25 frames of car-roundabout and car-shadow (scored: 1..23).

    Measured on this 2-core CPU: J&F 0.946 (car-roundabout 0.941, car-shadow 0.951) with the
    default options (0.945 with the old trimap prior and gate).
    """
    samples = davis_samples(data_dir / "davis16-dev", ["car-roundabout", "car-shadow"], max_frames=25)
    report = evaluate_videos(lambda: VideoSegmenter(lite, propagation="lite"), samples, progress=False)
    assert report["num_objects"] == 2 and all(r["frames_scored"] == 23 for r in report["objects"])
    assert report["mean"]["J&F"] >= 0.92, report["mean"]


@pytest.mark.slow
def test_davis_quality_two_hard_sequences(lite, data_dir):
    """DAVIS protocol, first 25 frames of two hard videos (scored: 1..23): bmx-trees (a rider
    passing behind trees) and libby (a small dog running). Floors: the measured J&F minus 0.05.

    Measured with the default options before zoom (frames at a long side of 768, the cycle-consistent
    cut, thin parts): bmx-trees 0.689, libby 0.874 (without thin parts 0.676 and 0.874; without the cut either
    0.667 and 0.877).
    At 512 (the default before): 0.603 and 0.781. With the older default, the warped previous mask as
    a trimap prior and the gate (prior_weight=3, gate_penalty=6): 0.521 and 0.583 (libby's mask
    shrinks to nothing by frame 17 and is found again two frames later).
    """
    samples = davis_samples(data_dir / "davis16-dev", ["bmx-trees", "libby"], max_frames=25)
    report = evaluate_videos(lambda: VideoSegmenter(lite, propagation="lite"), samples, progress=False)
    scores = {r["name"]: r["J&F"] for r in report["sequences"]}
    assert scores["bmx-trees"] >= 0.61 and scores["libby"] >= 0.82, scores


@pytest.mark.slow
def test_cycle_cut_keeps_the_dancer_and_not_from_a_predicted_frame(lite, data_dir):
    """DAVIS protocol, first 30 frames of breakdance (scored: 1..28): from frame 9 the dancer's legs
    cross the crowd and the matching's own cut keeps about half of him; the cycle-consistent cut
    (the given first frame judging each frame's threshold) takes him back.

    Measured: J&F 0.625 with ``cycle`` off, 0.759 with it on; the floors are those less 0.05."""
    samples = davis_samples(data_dir / "davis16-dev", ["breakdance"], max_frames=30)

    def score(cycle: bool) -> float:
        report = evaluate_videos(
            lambda: VideoSegmenter(lite, propagation="lite", video_options={"cycle": cycle}), samples, progress=False
        )
        return report["mean"]["J&F"]

    off, on = score(False), score(True)
    assert on >= 0.71 and on >= off + 0.08, (off, on)


def test_a_predicted_conditioning_mask_does_not_judge(lite, data_dir):
    """Only a mask a person gave judges the frames' cuts: a predicted first frame would calibrate
    every frame to its own errors."""
    frames = [read_image(davis(data_dir, "car-shadow", i)) for i in range(3)]
    mask0 = read_mask(davis(data_dir, "car-shadow", 0, "Annotations"))
    prop = LitePropagator(lite.engine)
    prop.start(frames[0], {"given": mask0, "guessed": mask0}, predicted=["guessed"])
    out = prop.step(frames[1])
    assert "cycle_bias" in out["given"].extra and "cycle_bias" not in out["guessed"].extra
    off = LitePropagator(lite.engine, {"cycle": False})
    off.start(frames[0], {"given": mask0})
    assert "cycle_bias" not in off.step(frames[1])["given"].extra


def test_thin_parts_only_where_a_person_labelled_them(lite, data_dir):
    """kite-surf's labelled frame has lines a pixel or two wide, which its track recovers on every
    frame; car-shadow's car has no thin parts; a predicted first mask does not count (only a person's
    mask shows what is thin); ``thin=false`` turns it off. Without the colour boundary, which may
    trim what the thin parts add."""
    kite = read_image(davis(data_dir, "kite-surf", 0))
    kite_mask = read_mask(davis(data_dir, "kite-surf", 0, "Annotations"))
    prop = LitePropagator(lite.engine, {"boundary": False})
    prop.start(kite, {"given": kite_mask, "guessed": kite_mask}, predicted=["guessed"])
    assert prop.tracks["given"].thin is not None and prop.tracks["guessed"].thin is None
    nxt = prop.step(read_image(davis(data_dir, "kite-surf", 1)))
    off = LitePropagator(lite.engine, {"thin": False, "boundary": False})
    off.start(kite, {"given": kite_mask})
    assert off.tracks["given"].thin is None
    plain = off.step(read_image(davis(data_dir, "kite-surf", 1)))["given"].mask
    assert (nxt["given"].mask & plain).sum() == plain.sum() and nxt["given"].mask.sum() > plain.sum()
    prop.start(
        read_image(davis(data_dir, "car-shadow", 0)),
        {"car": read_mask(davis(data_dir, "car-shadow", 0, "Annotations"))},
    )
    assert prop.tracks["car"].thin is None


@pytest.mark.slow
def test_thin_parts_recover_the_lines(lite, data_dir):
    """DAVIS protocol, first 25 frames of kite-surf and paragliding-launch (scored: 1..23), whose
    lines the stride-8 matching cannot hold: J&F with ``thin`` off and on.

    Measured on this 2-core CPU: kite-surf 0.510 off, 0.598 on; paragliding-launch 0.559 off, 0.589
    on. The floors: the measured gains less about half, and the figures with it less 0.04."""
    samples = davis_samples(data_dir / "davis16-dev", ["kite-surf", "paragliding-launch"], max_frames=25)

    def scores(thin: bool) -> dict[str, float]:
        report = evaluate_videos(
            lambda: VideoSegmenter(lite, propagation="lite", video_options={"thin": thin}), samples, progress=False
        )
        return {r["name"]: r["J&F"] for r in report["sequences"]}

    off, on = scores(False), scores(True)
    assert on["kite-surf"] >= max(off["kite-surf"] + 0.05, 0.56), (off, on)
    assert on["paragliding-launch"] >= max(off["paragliding-launch"] + 0.015, 0.55), (off, on)


def test_colour_boundary_grows_masks_to_their_edges(lite, data_dir):
    """DAVIS protocol, first 12 frames of kite-surf (scored: 1..10), whose surfer and board the
    cells' edge stops short of, and car-shadow, whose car the shadows beside it must not join: J&F
    with ``boundary`` off and on.

    Measured on this 2-core CPU: kite-surf 0.612 off, 0.645 on; car-shadow 0.972 off, 0.968
    on. The floors: kite-surf's gain less half and 0.62; car-shadow within 0.01."""
    samples = davis_samples(data_dir / "davis16-dev", ["kite-surf", "car-shadow"], max_frames=12)

    def scores(boundary: bool) -> dict[str, float]:
        report = evaluate_videos(
            lambda: VideoSegmenter(lite, propagation="lite", video_options={"boundary": boundary}),
            samples,
            progress=False,
        )
        return {r["name"]: r["J&F"] for r in report["sequences"]}

    off, on = scores(False), scores(True)
    assert on["kite-surf"] >= max(off["kite-surf"] + 0.016, 0.62), (off, on)
    assert on["car-shadow"] >= off["car-shadow"] - 0.01, (off, on)


def test_zoom_matches_a_shrunken_object_at_its_labelled_size(lite, data_dir):
    """libby's dog runs off: by frames 42 and 48 it covers 1.0-1.3 % of the frame against 3.6 % in
    the labelled frame 0. Jumping straight there from frame 0, the zoomed window (about 1.6 times the
    frame's scale) finds it far better; car-shadow's frame 1, at its labelled size, is not zoomed.

    Measured: IoU 0.615 and 0.659 with ``zoom`` off, 0.816 and 0.816 on; floors: the gain less half,
    and 0.76."""
    first = read_image(davis(data_dir, "libby", 0))
    mask0 = read_mask(davis(data_dir, "libby", 0, "Annotations"))
    for i in (42, 48):
        frame, truth = read_image(davis(data_dir, "libby", i)), read_mask(davis(data_dir, "libby", i, "Annotations"))
        scores = {}
        for zoom in (False, True):
            prop = LitePropagator(lite.engine, {"zoom": zoom})
            prop.start(first, {"dog": mask0})
            res = prop.step(frame)["dog"]
            assert ("zoom" in res.extra) == zoom and (not zoom or 1.25 <= res.extra["zoom"] <= 3.0)
            scores[zoom] = iou(res.mask, truth)
        assert scores[True] >= max(scores[False] + 0.1, 0.76), (i, scores)
    prop = LitePropagator(lite.engine)
    prop.start(
        read_image(davis(data_dir, "car-shadow", 0)),
        {"car": read_mask(davis(data_dir, "car-shadow", 0, "Annotations"))},
    )
    assert "zoom" not in prop.step(read_image(davis(data_dir, "car-shadow", 1)))["car"].extra


def test_streaming_api_several_labels(lite, data_dir):
    vs = VideoSegmenter(lite)
    assert vs.propagation == "lite"
    mask0 = read_mask(davis(data_dir, "blackswan", 0, "Annotations"))
    frames = [davis(data_dir, "blackswan", i) for i in range(4)]
    seen = []
    results = list(
        vs.segment(frames, masks={"swan": mask0, "water": ~mask0}, progress=lambda d, t, f: seen.append((d, t)))
    )
    assert [r.index for r in results] == [0, 1, 2, 3] and results[0].conditioning
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    for r in results[1:]:
        gt = read_mask(davis(data_dir, "blackswan", r.index, "Annotations"))
        swan, water = r.masks["swan"], r.masks["water"]
        assert swan.shape == gt.shape == water.shape
        assert (swan & gt).sum() / (swan | gt).sum() > 0.85
        assert (water & ~gt).sum() / (water | ~gt).sum() > 0.95
        assert 0.0 <= r.scores["swan"] <= 1.0
    with pytest.raises(InputError, match="no mask and no examples"):
        vs.segment(frames, labels=["cat"])


def test_in_context_from_another_video(lite, data_dir):
    """IC-VOS style: the example is a frame of car-roundabout, the video is car-shadow."""
    vs = VideoSegmenter(InContextSegmenter.from_config(engine="lite"))
    vs.add_examples(
        [davis(data_dir, "car-roundabout", 0)], [davis(data_dir, "car-roundabout", 0, "Annotations")], label="car"
    )
    frames = [davis(data_dir, "car-shadow", i) for i in range(0, 6)]
    ious = []
    for r in vs.segment(frames):
        gt = read_mask(davis(data_dir, "car-shadow", r.index, "Annotations"))
        m = r.masks["car"]
        ious.append((m & gt).sum() / max(1, (m | gt).sum()))
    assert min(ious) > 0.6, ious  # frame 0 predicted in context, then propagated


def test_lite_propagator_memory_is_bounded(lite, data_dir):
    prop = LitePropagator(lite.engine, {"memory_frames": 2})
    prop.start(
        read_image(davis(data_dir, "dog", 0)),
        {"dog": read_mask(davis(data_dir, "dog", 0, "Annotations")), "none": None},
    )
    for i in range(1, 6):
        out = prop.step(read_image(davis(data_dir, "dog", i)))
        assert out["none"].mask.sum() == 0 and out["none"].score == 0.0  # no examples, nothing given
    assert prop.memory_size()["dog"] <= 1 + 2


def test_pseudo_tube_and_tube_episodes(data_dir):
    img = read_image(davis(data_dir, "dog", 0))
    mask = read_mask(davis(data_dir, "dog", 0, "Annotations"))
    tube = pseudo_tube(img, mask, np.random.default_rng(1))
    assert len(tube) == 5 and all(f.image.shape == img.shape and f.mask.shape == mask.shape for f in tube)
    areas = sorted(int(f.mask.sum()) for f in tube)
    assert areas.count(int(mask.sum())) >= 4  # flips and blur keep the area; the rotation may clip it
    flipped = [f for f in tube if (f.mask == mask[:, ::-1]).all()]
    assert flipped and (flipped[0].image == img[:, ::-1]).all()
    eps = lite_tube_episodes([MaskTube("dog", [LabelledImage(img, mask)])])
    assert len(eps) == 1 and len(eps[0].support) == 1 and len(eps[0].query) == 4
    many = tube_from_video(
        [davis(data_dir, "dog", i) for i in range(12)],
        {i: davis(data_dir, "dog", i, "Annotations") for i in range(0, 12, 1)},
        "dog",
        max_frames=4,
    )
    assert len(many.frames) == 4


@pytest.mark.slow
def test_lite_tube_finetuning_improves_the_rest_of_the_video(data_dir):
    """Fine-tune on an accepted annotation of car-shadow's frames 0-8, score frames 10-38."""
    frames = [davis(data_dir, "car-shadow", i) for i in range(40)]
    tube = tube_from_video(frames, {i: davis(data_dir, "car-shadow", i, "Annotations") for i in range(0, 9, 2)}, "car")

    def score(seg):
        vs = VideoSegmenter(seg)
        mask10 = read_mask(davis(data_dir, "car-shadow", 10, "Annotations"))
        js = []
        for r in vs.segment(frames, masks={"car": mask10}, frame_index=10, direction="forward"):
            if not r.conditioning:
                gt = read_mask(davis(data_dir, "car-shadow", r.index, "Annotations"))
                js.append((r.masks["car"] & gt).sum() / (r.masks["car"] | gt).sum())
        return float(np.mean(js))

    base = score(InContextSegmenter.from_config(engine="lite"))
    seg = InContextSegmenter.from_config(engine="lite")
    figures = VideoSegmenter(seg).finetune([tube], steps=150)
    assert figures["loss_last"] < figures["loss_first"] and seg.engine.trained
    tuned = score(seg)
    assert tuned >= base - 0.01, (base, tuned)


def test_option_errors(lite):
    with pytest.raises(ValueError, match="unknown lite video option"):
        VideoSegmenter(lite, video_options={"bogus": 1})
    with pytest.raises(ValueError, match="unknown propagation"):
        VideoSegmenter(lite, propagation="magic")
    with pytest.raises(ValueError, match="direction"):  # checked at the call, before any frame is read
        VideoSegmenter(lite).segment(
            [np.zeros((8, 8, 3), np.uint8)], masks={"a": np.ones((8, 8), bool)}, direction="sideways"
        )
