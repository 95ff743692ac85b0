"""SAM 2 video propagation plumbing on davis16-dev frames with a random-weight SAM 2.1 tiny.

Random weights say nothing about quality; these tests check shapes, several objects in one pass,
the bounded memory bank, lazy decoding, both directions, and (slow) that the bounded loop gives
the same masks as the upstream SAM2VideoPredictor, which keeps every frame.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from dcsam import InContextSegmenter
from dcsam.io import read_image, read_mask
from dcsam.sam_models import build_sam_model
from dcsam.video import CallableSource, VideoSegmenter
from dcsam.video.sam2_propagation import Sam2Propagator, fill_small_holes

SIZE = 256  # SAM 2 input size for CPU tests (the released models run at 1024)


@pytest.fixture(scope="module")
def sam2_tiny():
    torch.manual_seed(0)
    return build_sam_model("sam2.1_hiera_t", random_weights=True, image_size=SIZE)


@pytest.fixture(scope="module")
def dog(data_dir):
    root = data_dir / "davis16-dev"
    frames = [str(root / "JPEGImages" / "dog" / f"{i:05d}.jpg") for i in range(60)]
    return frames, read_mask(str(root / "Annotations" / "dog" / "00000.png"))


class CountingFrames(CallableSource):
    """Decodes on demand and records which frames were decoded, in order."""

    def __init__(self, paths):
        self.decoded = []
        super().__init__(len(paths), self._read)
        self.paths = paths

    def _read(self, i):
        self.decoded.append(i)
        return self.paths[i]


def test_several_objects_one_pass_bounded_memory(sam2_tiny, dog):
    paths, mask0 = dog
    prop = Sam2Propagator(sam2_tiny, fill_hole_area=8)
    frame0 = read_image(paths[0])
    half = np.zeros_like(mask0)
    half[:, : mask0.shape[1] // 2] = True
    first = prop.start(frame0, {"dog": mask0, "left": half, "absent": None}, index=0, num_frames=len(paths))
    assert set(first) == {"dog", "left", "absent"}
    assert (first["dog"].mask == mask0).all() and first["absent"].score == 0.0
    calls = []
    orig = sam2_tiny.forward_image
    sam2_tiny.forward_image = lambda x: (calls.append(x.shape), orig(x))[1]
    try:
        sizes = []
        for i in range(1, 21):
            out = prop.step(read_image(paths[i]), i)
            assert set(out) == {"dog", "left", "absent"}
            for r in out.values():
                assert r.mask.shape == mask0.shape and r.mask.dtype == bool and 0.0 <= r.score <= 1.0
            sizes.append(prop.memory_size())
    finally:
        sam2_tiny.forward_image = orig
    # one image encoding per frame for all three objects (batched), at the SAM 2 input size
    assert calls == [(1, 3, SIZE, SIZE)] * 20
    # the bank holds the conditioning frame, 6 memory frames and 9 more object pointers at most
    assert sizes[-1] == {"cond": 1, "memory_frames": 6, "pointer_only": 9}
    assert all(s["memory_frames"] <= 6 and s["memory_frames"] + s["pointer_only"] <= 15 for s in sizes)
    assert all(o["maskmem_features"].shape[0] == 3 for o in prop.non_cond.values() if o["maskmem_features"] is not None)


def test_video_segmenter_streams_lazily_both_directions(sam2_tiny, dog):
    paths, _ = dog
    paths = paths[:8]
    seg = InContextSegmenter.from_config(engine="lite")  # the image engine is not used: masks are given
    vs = VideoSegmenter(seg, propagation="sam2", sam2_model=sam2_tiny)
    assert vs.propagation == "sam2" and vs.version.endswith("+video-sam2")
    src = CountingFrames(paths)
    mask3 = read_mask(str(paths[3]).replace("JPEGImages", "Annotations").replace(".jpg", ".png"))
    progress = []
    gen = vs.segment(
        src,
        masks={"dog": mask3, "inv": ~mask3},
        frame_index=3,
        progress=lambda d, t, f: progress.append((d, t, f["index"])),
    )
    first = next(gen)  # a generator: nothing beyond the conditioning frame decoded yet
    assert first.index == 3 and first.conditioning and src.decoded == [3]
    rest = list(gen)
    order = [first.index] + [r.index for r in rest]
    assert order == [3, 4, 5, 6, 7, 2, 1, 0]  # forward from the labelled frame, then backward
    assert src.decoded == order  # each frame decoded once, when needed
    assert progress[-1] == (8, 8, 0) and [p[0] for p in progress] == list(range(1, 9))
    for r in rest:
        assert set(r.masks) == {"dog", "inv"} and r.masks["dog"].shape == (480, 854) and r.error is None


def test_undecodable_frame_is_reported_and_skipped(sam2_tiny, dog):
    paths, mask0 = dog
    frames = [paths[0], b"not an image", paths[2]]
    vs = VideoSegmenter(InContextSegmenter.from_config(engine="lite"), propagation="sam2", sam2_model=sam2_tiny)
    results = list(vs.segment(frames, masks={"dog": mask0}))
    assert [r.index for r in results] == [0, 1, 2]
    assert results[1].error and "not a readable image" in results[1].error and not results[1].masks
    assert results[2].error is None and results[2].masks["dog"].shape == mask0.shape


def test_fill_small_holes_matches_upstream_rule():
    z = -torch.ones(1, 1, 16, 16)
    z[0, 0, 2:14, 2:14] = 1.0
    z[0, 0, 4, 4] = -1.0  # a 1-pixel hole: filled with 0.1
    z[0, 0, 8:11, 8:11] = -1.0  # a 9-pixel hole: larger than 8, stays
    out = fill_small_holes(z, 8)
    assert out[0, 0, 4, 4] == pytest.approx(0.1)
    assert (out[0, 0, 8:11, 8:11] == -1).all() and (out[0, 0, 0] == -1).all()
    assert torch.equal(fill_small_holes(z, 0), z)


@pytest.mark.slow
def test_bounded_loop_matches_upstream_video_predictor(sam2_tiny, dog, tmp_path):
    """Same masks as SAM2VideoPredictor (which keeps all frames) over 20 frames, two objects."""
    from hydra import compose
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    paths, mask0 = dog
    n = 20
    for i in range(n):  # frames at the model's input size, so neither side resizes
        Image.open(paths[i]).convert("RGB").resize((SIZE, SIZE), Image.BILINEAR).save(tmp_path / f"{i}.jpg", quality=95)
    small0 = np.asarray(Image.fromarray(mask0).resize((SIZE, SIZE), Image.NEAREST)) > 0
    other = np.zeros_like(small0)
    other[20:120, 150:230] = True
    cfg = compose(
        config_name="configs/sam2.1/sam2.1_hiera_t.yaml",
        overrides=[
            "++model._target_=sam2.sam2_video_predictor.SAM2VideoPredictor",
            "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
            "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
            "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
            "++model.binarize_mask_from_pts_for_mem_enc=true",
            "++model.fill_hole_area=0",
            f"++model.image_size={SIZE}",
        ],
    )
    OmegaConf.resolve(cfg)
    upstream = instantiate(cfg.model, _recursive_=True)
    upstream.load_state_dict(sam2_tiny.state_dict())
    upstream.eval()
    state = upstream.init_state(str(tmp_path))
    upstream.add_new_mask(state, 0, 1, small0)
    upstream.add_new_mask(state, 0, 2, other)
    ref = {i: m[:, 0].numpy() for i, _, m in upstream.propagate_in_video(state)}

    prop = Sam2Propagator(sam2_tiny, fill_hole_area=0)
    prop.start(read_image(str(tmp_path / "0.jpg")), {"a": small0, "b": other}, index=0, num_frames=n)
    for i in range(1, n):
        out = prop.step(read_image(str(tmp_path / f"{i}.jpg")), i)
        for k, lab in enumerate(("a", "b")):
            agree = (out[lab].mask == (ref[i][k] > 0)).mean()
            assert agree > 0.999, (i, lab, agree)
    assert prop.memory_size()["memory_frames"] + prop.memory_size()["pointer_only"] == 15
