"""Mask-tube training through SAM 2 memory (tiny CPU config): of a trained DC-SAM prompt generator, and of the
cold start's project prompter."""

import numpy as np
import pytest
import torch

from dcsam import InContextSegmenter, InputError, LabelledImage
from dcsam.data.synthetic import SyntheticEpisodes
from dcsam.masks import iou
from dcsam.modeling import SupportFeatures
from dcsam.video.tubes import (
    MaskTube,
    PrompterTubeForward,
    TubeForward,
    encode_tubes,
    finetune_on_tubes,
    finetune_prompt_generator_on_tubes,
    tube_loss,
)
from tests.support.clips import panning_clip
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


# -- the cold start's project prompter through SAM 2 memory ------------------------------------------------
@pytest.mark.slow
def test_a_loss_on_later_frames_reaches_the_project_prompter_through_memory(engine):
    """Only frame 0 is prompted (by the cold start plus the prompter): a later frame's mask depends on the
    prompter through SAM 2's memory of frame 0 alone, so its loss must reach the prompter through it."""
    ds = SyntheticEpisodes(image_size=128, classes=6, distractors=1, seed=0)
    query, example = (MaskTube("a", panning_clip(ds, 0, i, frames=3)) for i in (0, 1))
    encoded = encode_tubes(engine, [query, example], max_frames=3, seed=0)
    prompter = engine.new_prompter(seed=0)
    logits = PrompterTubeForward(engine)(encoded[0], SupportFeatures.cat([encoded[1].views[0][1]]), prompter)
    assert logits is not None and len(logits) == 3 and all(lg.shape == (1, 1, 64, 64) for lg in logits)
    tube_loss(logits[1:], encoded[0].targets[1:]).backward()
    # the output layers start at zero, so they are where the first gradient lands
    moved = {n for n, p in prompter.named_parameters() if p.grad is not None and float(p.grad.abs().sum()) > 0}
    assert {"dense.4.weight", "tokens.2.weight"} <= moved, moved
    frozen = [*engine.model.sam.parameters(), *engine.model.backbone.parameters()]
    assert all(p.grad is None for p in frozen)  # SAM 2 and the backbone stay frozen


@pytest.mark.slow
def test_training_the_project_prompter_through_memory_on_held_out_tubes():
    """A synthetic frame-sequence project: 2 labels x 3 panning clips of 3 frames to train on, 3 more per label
    held out, each held-out clip scored 1-shot with the first frame of each training clip of its label as the
    example (through :class:`PrompterTubeForward`, i.e. as served: frame 0 prompted, frames 1.. from memory).

    Measured (2-core CPU, torch seed 0, 100 steps): conditioning-frame mIoU 0.451 -> 0.484 (+3.3 points),
    later frames 0.190 -> 0.191 (+0.06), their loss 1.514 -> 1.514. With RANDOM SAM 2 weights the later frames
    barely depend on the first frame's mask at all (ground truth instead of an empty mask moves their logits by
    0.002 on average, |logit| 0.15; IoU unchanged), so no training before SAM 2's memory can gain on them here:
    what this test asserts is the gain where the prompter acts (the conditioning frame) and no loss after it.
    """
    torch.manual_seed(0)  # the random SAM weights
    seg = InContextSegmenter.from_config(**TINY_DCSAM, options={"project_steps": 100, "seed": 0})
    engine = seg.engine
    ds = SyntheticEpisodes(image_size=128, classes=6, distractors=1, seed=0)
    train = [MaskTube(str(c), panning_clip(ds, c, i, frames=3)) for c in (0, 1) for i in range(3)]
    test = [MaskTube(str(c), panning_clip(ds, c, 1000 + i, frames=3)) for c in (0, 1) for i in range(3)]
    encoded_train, encoded_test = (encode_tubes(engine, tubes, max_frames=3, seed=0) for tubes in (train, test))
    examples = [(t.label, SupportFeatures.cat([t.views[0][1]])) for t in encoded_train]
    fwd = PrompterTubeForward(engine)

    @torch.no_grad()
    def held_out() -> tuple[float, float]:
        """(conditioning-frame mIoU, later frames' mIoU) over the (clip, example) pairs with a prior."""
        first, later = [], []
        for tube in encoded_test:
            for label, support in examples:
                out = fwd(tube, support, engine.prompter) if label == tube.label else None
                if out is None:
                    continue
                ious = [iou(lg[0, 0].numpy() > 0, tg[0, 0].numpy() > 0.5) for lg, tg in zip(out, tube.targets)]
                first.append(ious[0])
                later += ious[1:]
        return float(np.mean(first)), float(np.mean(later))

    before = held_out()
    figures = finetune_on_tubes(seg, train)
    after = held_out()
    print(f"held-out mIoU (conditioning frame, later frames): cold start {before} -> trained {after}; {figures}")
    assert figures["through_memory"] and figures["steps"] == 100 and "-pp-" in engine.version
    assert after[0] - before[0] >= 0.02, (before, after)
    assert after[1] >= before[1] - 0.01, (before, after)
