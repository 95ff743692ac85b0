"""The DC-SAM engine through the public API: cold start, trained prompt generator, checkpoints."""

import numpy as np
import pytest
import torch

from dcsam import CheckpointError, InContextSegmenter
from dcsam.engines.base import Prompts
from dcsam.engines.dcsam_engine import prompts_from_priors, save_prompt_generator
from tests.support.models import TINY_DCSAM


def synthetic_pair(seed: int):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, (200, 240, 3), dtype=np.uint8)
    mask = np.zeros((200, 240), bool)
    mask[50:150, 60:170] = True
    img[mask] = (220, 40, 40)
    return img, mask


@pytest.fixture(scope="module")
def segmenter():
    seg = InContextSegmenter.from_config(engine="dcsam", sam="sam2.1_hiera_t", random_sam_weights=True)
    img, mask = synthetic_pair(0)
    seg.add_examples([img], [mask], label="thing")
    return seg


def test_cold_start_predicts_native_size_masks(segmenter):
    img, _ = synthetic_pair(1)
    small = img[:120, :150]
    preds = segmenter.predict([img, small])
    assert preds[0].masks["thing"].shape == img.shape[:2]
    assert preds[1].masks["thing"].shape == small.shape[:2]
    assert all(0.0 <= p.scores["thing"] <= 1.0 for p in preds)
    assert segmenter.version.endswith("-coldstart-random")


def test_broken_query_fails_alone(segmenter):
    img, _ = synthetic_pair(2)
    preds = segmenter.predict([b"not an image", img])
    assert preds[0].error and "not a readable image" in preds[0].error
    assert preds[1].error is None and "thing" in preds[1].masks


def test_prompts_from_priors_points_and_box():
    pos = torch.zeros(64, 64)
    neg = torch.full((64, 64), 0.5)
    pos[10:30, 20:40] = 0.9
    coords, labels, box, region = prompts_from_priors(pos, neg, 1024)
    assert labels[0] == 1 and (labels == 0).any()
    assert box.tolist() == [20 * 16, 10 * 16, 40 * 16, 30 * 16]
    x, y = coords[0].tolist()
    assert 20 * 16 <= x <= 40 * 16 and 10 * 16 <= y <= 30 * 16
    assert region.sum() == 400
    assert prompts_from_priors(torch.zeros(64, 64), neg, 1024) is None


def test_trained_prompt_generator_round_trip(tmp_path, segmenter):
    engine = segmenter.engine
    path = tmp_path / "pg.pt"
    save_prompt_generator(path, engine.model, engine.config)
    seg2 = InContextSegmenter.from_config(engine.config, prompt_generator=str(path))
    assert "-pg-" in seg2.version
    img, mask = synthetic_pair(0)
    seg2.add_examples([img], [mask], label="thing")
    [pred] = seg2.predict([synthetic_pair(3)[0]])
    assert pred.masks["thing"].shape == (200, 240)
    with pytest.raises(CheckpointError, match="other settings"):
        InContextSegmenter.from_config(engine.config, prompt_generator=str(path), variant="prior_only")
    truncated = tmp_path / "bad.pt"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        InContextSegmenter.from_config(engine.config, prompt_generator=str(truncated))


def test_finetune_trains_only_the_prompt_generator():
    from dcsam.engines.base import Episode, LabelledImage

    seg = InContextSegmenter.from_config(**TINY_DCSAM)
    engine = seg.engine
    items = [LabelledImage(*synthetic_pair(i)) for i in range(3)]
    engine.load_trainable_state_dict(engine.model.generator.state_dict())  # a "trained" generator to start from
    frozen = {k: v.clone() for k, v in engine.model.state_dict().items() if not k.startswith("generator.")}
    before = {k: v.clone() for k, v in engine.model.generator.state_dict().items()}
    version = engine.version
    calls = []
    figures = engine.finetune(
        [Episode(support=items[:1], query=items[1:], label="thing")],
        steps=4,
        progress=lambda s, t, f: calls.append((s, t)),
    )
    assert figures["pairs"] == 3 and figures["steps"] == 4 and calls[-1] == (4, 4)
    assert engine.version != version and "-pg-" in engine.version
    after = engine.model.generator.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(v, engine.model.state_dict()[k]) for k, v in frozen.items())
    assert not engine.model.generator.training
    engine.load_trainable_state_dict({})  # the empty state (how a cold-start engine saves) is the cold start again
    assert not engine.trained and engine.version.endswith("-coldstart-random")


def _spy_on_sam_prompts(engine, monkeypatch) -> dict:
    """What the engine's SAM decoder is given: ``seen["points"]`` and ``seen["boxes"]`` of the last call."""
    seen: dict = {}
    orig = engine.model.sam.decode_prompts

    def spy(feats, points=None, boxes=None, **kw):
        seen["points"], seen["boxes"] = points, boxes
        return orig(feats, points=points, boxes=boxes, **kw)

    monkeypatch.setattr(engine.model.sam, "decode_prompts", spy)
    return seen


def test_clicks_and_box_go_to_sams_own_prompting(segmenter, monkeypatch):
    engine = segmenter.engine
    size = engine.model.sam.image_size
    seen = _spy_on_sam_prompts(engine, monkeypatch)
    img, _ = synthetic_pair(3)  # 240 x 200
    out = engine.prompt(img, Prompts([(120.0, 100.0, True), (24.0, 180.0, False)], (60.0, 50.0, 180.0, 150.0)))
    assert out.mask.shape == (200, 240) and 0.0 <= out.score <= 1.0
    coords, labels = seen["points"]
    # SAM's input is the image stretched to size x size: pixel coordinates scale per axis
    assert torch.allclose(coords.cpu(), torch.tensor([[[size / 2, size / 2], [size / 10, size * 0.9]]]))
    assert labels.cpu().tolist() == [[1, 0]]
    assert torch.allclose(seen["boxes"].cpu(), torch.tensor([[size / 4, size / 4, size * 0.75, size * 0.75]]))
    # refinement with an unknown label (no in-context start) uses it, clipped to the box
    mask, score = segmenter.refine(img, None, points=[(120.0, 100.0, True)], box=(60.0, 50.0, 180.0, 150.0))
    assert seen["boxes"] is not None and mask.shape == (200, 240) and not mask[:50].any() and not mask[:, :60].any()
    assert engine.prompt(img, Prompts()) is None


def test_the_lite_engine_has_no_promptable_model():
    seg = InContextSegmenter.from_config(engine="lite")
    img, _ = synthetic_pair(4)
    assert seg.engine.prompt(img, Prompts([(10.0, 10.0, True)])) is None


def test_a_box_goes_to_sam_even_when_the_mask_lies_inside_it(segmenter, monkeypatch):
    # a tight box around an object says where it ends: a starting mask that lies inside the box but
    # stops short of it (the sneaker without its sole) is not returned unchanged, SAM answers the box
    engine = segmenter.engine
    size = engine.model.sam.image_size
    seen = _spy_on_sam_prompts(engine, monkeypatch)
    img, _ = synthetic_pair(5)  # 240 x 200
    start = np.zeros((200, 240), bool)
    start[60:120, 70:170] = True  # inside the box, short of its bottom
    mask, score = segmenter.refine(img, start, box=(60.0, 50.0, 180.0, 150.0), label="thing", mask_score=0.9)
    assert seen["boxes"] is not None
    assert torch.allclose(seen["boxes"].cpu(), torch.tensor([[size / 4, size / 4, size * 0.75, size * 0.75]]))
    assert mask.shape == (200, 240) and not mask[:50].any() and not mask[150:].any()
    assert not mask[:, :60].any() and not mask[:, 180:].any()
    assert 0.0 <= score <= 1.0
