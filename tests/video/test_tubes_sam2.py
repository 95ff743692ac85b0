"""Mask-tube training of the DC-SAM prompt generator through SAM 2 memory (tiny CPU config)."""

import numpy as np
import pytest
import torch

from dcsam import InContextSegmenter, InputError, LabelledImage
from dcsam.video.tubes import MaskTube, TubeForward, finetune_prompt_generator_on_tubes, tube_loss
from tests.support.models import TINY_DCSAM


def synthetic(seed, shift=0):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, (128, 128, 3), dtype=np.uint8)
    mask = np.zeros((128, 128), bool)
    mask[30 + shift : 80 + shift, 40:90] = True
    img[mask] = (220, 40, 40)
    return LabelledImage(img, mask)


@pytest.fixture(scope="module")
def engine():
    torch.manual_seed(0)
    return InContextSegmenter.from_config(**TINY_DCSAM).engine


@pytest.mark.slow
def test_loss_on_later_frames_reaches_the_generator_through_memory(engine):
    """Frames 1.. get no prompt: their only path to the generator is SAM 2's memory."""
    model = engine.model
    fwd = TubeForward(model)
    sam2 = fwd.sam2
    size = model.sam.image_size
    from dcsam.engines.dcsam_engine import mask_tensor, to_tensor

    support = synthetic(0)
    with torch.no_grad():
        s = model.encode_support(to_tensor(support.image, size, "cpu"), mask_tensor(support.mask, size, "cpu"))
        frames = []
        for k in range(3):
            img = to_tensor(synthetic(k + 1, shift=3 * k).image, size, "cpu")
            frames.append((model.encode_query(img) if k == 0 else None, fwd.frame_features(img)))
    saved = sam2.pred_obj_scores
    sam2.pred_obj_scores = False  # random weights may call every object absent, which cuts the gradient
    try:
        model.generator.zero_grad(set_to_none=True)
        logits = fwd(s, frames)
        assert len(logits) == 3 and all(lg.shape == (1, 1, 64, 64) for lg in logits)
        later = [
            torch.from_numpy(synthetic(k + 1, shift=3 * k).mask[::2, ::2].copy()).float()[None, None] for k in (1, 2)
        ]
        tube_loss(logits[1:], later).backward()
    finally:
        sam2.pred_obj_scores = saved
    grads = [p.grad for p in model.generator.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is None for p in sam2.parameters())  # SAM 2 stays frozen


@pytest.mark.slow
def test_finetune_on_tubes_trains_the_generator(engine):
    pairs = [(synthetic(0), MaskTube("thing", [synthetic(i, shift=2 * i) for i in range(1, 4)]))]
    before = {k: v.clone() for k, v in engine.model.generator.state_dict().items()}
    with pytest.raises(InputError, match="cold start"):
        finetune_prompt_generator_on_tubes(engine, pairs, steps=1)
    figures = finetune_prompt_generator_on_tubes(engine, pairs, steps=4, lr=1e-3, max_frames=3, from_scratch=True)
    assert figures["steps"] == 4 and figures["loss_last"] < figures["loss_first"]
    assert engine.trained and "-pg-" in engine.version
    after = engine.model.generator.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
