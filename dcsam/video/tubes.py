"""Mask-tube fine-tuning from annotated videos.

A *mask tube* is one object (label) through a few frames: the frames of an accepted video
annotation, or - from a single labelled frame - 5 pseudo-frames (identity, rotation by
U[-10, 10] degrees, horizontal flip, vertical flip, 5x5 Gaussian blur, shuffled).

* Lite engine: :func:`finetune_lite_on_tubes` turns each tube into an episode (its first frame
  the support, the others the queries) and runs the lite engine's own fine-tuning on them (its
  head trains on every ordered pair of frames; the frames join the label's matching memory).
* DC-SAM on SAM 2: :func:`finetune_prompt_generator_on_tubes` trains the prompt generator on
  (support image, query tube) pairs through SAM 2's memory, as the release's stage B does:
  prompts from the tube's first frame drive SAM 2 on that frame (the conditioning frame, no
  memory), its mask is encoded into memory (sigmoid, differentiable), SAM 2 propagates through
  the other frames, and BCE + Dice over every frame of the tube flows back into the generator
  through memory attention and the memory encoder. SAM 2 itself stays frozen (the release also
  trains SAM 2's mask decoder; not done here).
* The DC-SAM cold start on SAM 2 (no trained generator): :func:`finetune_project_prompter_on_tubes` trains its
  project prompter the same way, through the path a frame-sequence project is served by: the prompter's
  corrections prompt SAM on the tube's first frame, that mask conditions SAM 2 (a mask input, as
  :class:`~dcsam.video.sam2_propagation.Sam2Propagator` does) and SAM 2 tracks the later frames from memory; the
  loss over every frame flows back through memory attention, the memory encoder and the object pointer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..engines.base import Episode, LabelledImage, ProgressFn
from ..errors import InputError
from ..masks import resize_mask
from ..modeling import SupportFeatures
from ..modeling.sam2_internals import autograd_rope_tables, encode_memory, flat_backbone_features, track_frame
from ..training.loop import finetune_figures, optimise
from ..training.losses import soft_bce_dice_loss
from ..training.project import cosine_lr, schedule_steps

log = logging.getLogger(__name__)

IMAGENET_MEAN_RGB = (124, 116, 104)  # border colour of the rotated pseudo-frame (ImageNet mean)


@dataclass
class MaskTube:
    """Frames of one label through a video, in time order (at least one)."""

    label: str
    frames: list[LabelledImage]


def pseudo_tube(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator | None = None) -> list[LabelledImage]:
    """The 5 pseudo-frames of one labelled image, shuffled."""
    rng = rng or np.random.default_rng(0)
    mask = np.asarray(mask, bool)
    h, w = mask.shape
    angle = float(rng.uniform(-10.0, 10.0))
    rot = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, 1.0)
    frames = [
        (image, mask),
        (
            cv2.warpAffine(
                image,
                rot,
                (w, h),
                flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=IMAGENET_MEAN_RGB,
            ),
            cv2.warpAffine(mask.astype(np.uint8), rot, (w, h), flags=cv2.INTER_NEAREST, borderValue=0) > 0,
        ),
        (np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(mask[:, ::-1])),
        (np.ascontiguousarray(image[::-1]), np.ascontiguousarray(mask[::-1])),
        (cv2.GaussianBlur(image, (5, 5), 0), mask),
    ]
    order = rng.permutation(len(frames))
    return [LabelledImage(image=np.ascontiguousarray(frames[i][0]), mask=frames[i][1]) for i in order]


def tube_from_video(frames: Any, masks: Mapping[int, Any], label: str, max_frames: int = 5) -> MaskTube:
    """A tube from annotated frames ``{frame index: mask}`` of a video (read lazily, at most
    ``max_frames`` of them, evenly spread)."""
    from ..io import read_mask
    from .frames import open_frames

    src = open_frames(frames)
    idx = sorted(masks)
    if not idx:
        raise InputError(f"tube for {label!r}: no annotated frames")
    if len(idx) > max_frames:
        idx = [idx[int(round(k))] for k in np.linspace(0, len(idx) - 1, max_frames)]
    items = []
    for i in idx:
        image, m = src.read(i), read_mask(masks[i])
        if m.shape != image.shape[:2]:
            m = resize_mask(m, *image.shape[:2])
        if m.any():
            items.append(LabelledImage(image=image, mask=m))
    if not items:
        raise InputError(f"tube for {label!r}: every annotated mask is empty")
    return MaskTube(label, items)


def _nonempty_frames(tube: MaskTube) -> list[LabelledImage]:
    frames = [f for f in tube.frames if f.mask.any()]
    if not frames:
        raise InputError(f"tube for {tube.label!r} has no non-empty mask")
    return frames


def _tube_frames(tube: MaskTube, max_frames: int, rng: np.random.Generator) -> list[LabelledImage]:
    frames = _nonempty_frames(tube)
    if len(frames) == 1:
        return pseudo_tube(frames[0].image, frames[0].mask, rng)
    if len(frames) > max_frames:
        frames = [frames[int(round(k))] for k in np.linspace(0, len(frames) - 1, max_frames)]
    return frames


def lite_tube_episodes(tubes: Sequence[MaskTube], max_frames: int = 5, seed: int = 0) -> list[Episode]:
    """One episode per tube: its first frame the support, the rest the queries."""
    rng = np.random.default_rng(seed)
    episodes = []
    for tube in tubes:
        frames = _tube_frames(tube, max_frames, rng)
        episodes.append(Episode(support=[frames[0]], query=list(frames[1:]), label=tube.label))
    return episodes


def finetune_lite_on_tubes(
    segmenter: Any,
    tubes: Sequence[MaskTube],
    *,
    steps: int | None = None,
    max_frames: int = 5,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Fine-tune a lite :class:`InContextSegmenter` (or VideoSegmenter) on mask tubes."""
    seg = getattr(segmenter, "segmenter", segmenter)
    if seg.engine.name != "lite":
        raise InputError(
            "finetune_lite_on_tubes needs the lite engine; use finetune_prompt_generator_on_tubes for DC-SAM"
        )
    episodes = lite_tube_episodes(tubes, max_frames)
    figures = seg.finetune(episodes, steps=steps, progress=progress)
    return {**figures, "tubes": len(tubes), "frames": sum(1 + len(e.query) for e in episodes)}


# -- DC-SAM prompt generator through SAM 2 memory ---------------------------------------------------
class TubeForward:
    """Stage-B forward of DC-SAM on SAM 2: prompts on the first frame, memory propagation after."""

    def __init__(self, model: Any) -> None:
        if model.sam.family != "sam2":
            raise InputError("mask-tube training through memory needs a SAM 2 model")
        self.model = model
        self.sam2 = model.sam.model
        self.size = int(self.sam2.image_size)
        autograd_rope_tables(self.sam2)  # the process may have propagated a video under inference_mode

    @torch.no_grad()
    def frame_features(self, image: torch.Tensor):
        """Frozen SAM 2 features of one frame (1, 3, H, W) in [0, 1]: (feats, pos, sizes)."""
        m = self.sam2
        out = m.forward_image(self.model.sam.preprocess(image))
        return flat_backbone_features(m, out)

    def first_frame(self, query, support, feats0, sizes0) -> tuple[torch.Tensor, dict]:
        """DC-SAM's prompts on the conditioning frame; returns its low-res logits and memory entry."""
        model, m = self.model, self.sam2
        out = model.forward_features(query, support)
        sparse = model.sparse_prompts(out["tokens_pos"], out["tokens_neg"])
        low, _, tokens, obj_logits = model.sam.decode_tokens_sam2(query.sam, sparse)
        obj_ptr = m.obj_ptr_proj(tokens[:, 0])
        if m.pred_obj_scores:
            lam = (obj_logits > 0).float()
            if m.fixed_no_obj_ptr:
                obj_ptr = lam * obj_ptr
            obj_ptr = obj_ptr + (1 - lam) * m.no_obj_ptr
        # memory of the conditioning frame: sigmoid mask (differentiable, as in training mode)
        high = F.interpolate(low.float(), size=(self.size, self.size), mode="bilinear", align_corners=False)
        feats, pos = encode_memory(m, feats0, sizes0, torch.sigmoid(high), obj_logits)
        entry = {
            "maskmem_features": feats,
            "maskmem_pos_enc": pos,
            "obj_ptr": obj_ptr,
            "object_score_logits": obj_logits,
        }
        return low, entry

    def __call__(self, support, frames: list[tuple[Any, tuple]]) -> list[torch.Tensor]:
        """``frames``: per tube frame (query features or None, (feats, pos, sizes)).

        Returns the low-res logits (1, 1, 4h, 4w) of every frame, with gradients to the generator.
        """
        (query0, (feats0, _, sizes0)) = frames[0]
        low0, entry = self.first_frame(query0, support, feats0, sizes0)
        cond = {0: entry}
        non_cond: dict[int, dict] = {}
        outs = [low0]
        for t, (_, features) in enumerate(frames[1:], start=1):
            cur = track_frame(self.sam2, t, features, (cond, non_cond), len(frames))
            non_cond[t] = cur
            outs.append(cur["pred_masks"])
        return outs


def tube_loss(logits: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
    """BCE (mean over the tube's pixels) + Dice over the whole tube."""
    z = torch.cat(
        [
            F.interpolate(lg.float(), size=tg.shape[-2:], mode="bilinear", align_corners=False).flatten()
            for lg, tg in zip(logits, targets)
        ]
    )
    y = torch.cat([tg.flatten() for tg in targets])
    return soft_bce_dice_loss(z[None], y[None])  # the tube is one sample


def finetune_prompt_generator_on_tubes(
    engine: Any,
    pairs: Sequence[tuple[LabelledImage, MaskTube]],
    *,
    steps: int = 100,
    lr: float = 1e-5,
    max_frames: int = 5,
    seed: int = 0,
    progress: ProgressFn | None = None,
    from_scratch: bool = False,
) -> dict[str, Any]:
    """Fine-tune a DC-SAM engine's trained prompt generator on (support image, query tube) pairs
    through SAM 2 memory (the release's stage B: lr 1e-5). The cold start has no trained generator: a few
    tubes cannot train one from random weights, so that is refused unless ``from_scratch`` (tests)."""
    from ..engines.dcsam_engine import mask_tensor, to_tensor  # late: loads SAM's builders

    if not engine.trained and not from_scratch:
        raise InputError(
            "the cold start has no trained prompt generator to fine-tune on mask tubes: train one "
            "with `dcsam train` and serve it (prompt_generator / DCSAM_PROMPT_GENERATOR) first"
        )
    model = engine.model
    fwd = TubeForward(model)
    device = next(model.generator.parameters()).device
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    size = model.sam.image_size
    prepared = []
    with torch.no_grad():  # frozen encoders once per frame
        for support, tube in pairs:
            frames = _tube_frames(tube, max_frames, rng)
            s_img = to_tensor(support.image, size, device)
            s_feats = model.encode_support(s_img, mask_tensor(support.mask, size, device))
            items, targets = [], []
            for k, fr in enumerate(frames):
                img = to_tensor(fr.image, size, device)
                query = model.encode_query(img) if k == 0 else None
                items.append((query, fwd.frame_features(img)))
                targets.append(mask_tensor(fr.mask, 4 * fwd.sam2.sam_image_embedding_size, device))
            prepared.append((s_feats, items, targets))
    if not prepared:
        raise InputError("no (support, tube) pairs to train on")
    gen = model.generator
    params = [p for p in gen.parameters() if p.requires_grad] or list(gen.parameters())
    for p in params:
        p.requires_grad_(True)
    optim = torch.optim.AdamW(params, lr=lr, weight_decay=1e-6)

    def step_loss(step: int) -> torch.Tensor:
        s_feats, items, targets = prepared[int(rng.integers(len(prepared)))]
        return tube_loss(fwd(s_feats, items), targets)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        losses = optimise(gen, optim, step_loss, int(steps), progress)
    engine.load_trainable_state_dict({k: v.detach().clone() for k, v in gen.state_dict().items()})
    return finetune_figures(losses, int(steps), len(prepared), t0, last=5)


# -- the cold start's project prompter through SAM 2 memory ---------------------------------------------
@dataclass
class TubeFrames:
    """One tube's frames encoded once (frozen networks): per frame the engine's query and support features
    (:meth:`DCSAMEngine.encode_view`), SAM 2's flat features (:func:`flat_backbone_features`) and the target,
    the share of each low-res cell (S/4 x S/4) inside the mask (1, 1, S/4, S/4)."""

    label: str
    views: list[tuple[Any, Any]]  # (QueryFeatures, SupportFeatures) per frame
    features: list[tuple[list[torch.Tensor], list[torch.Tensor], list[tuple[int, int]]]]
    targets: list[torch.Tensor]


def straight_through(hard: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """``hard``'s values with ``soft``'s gradient: SAM 2 sees the binary mask it sees when serving, and the
    loss still reaches what made the mask."""
    return hard + soft - soft.detach()


class PrompterTubeForward:
    """The DC-SAM cold start on a tube as a frame-sequence project is served, differentiable in the prompter.

    Frame 0: the cold start's prompts plus the prompter's corrections, SAM's candidate picked as served
    (:func:`~dcsam.engines.dcsam_engine.pick_candidate`); its mask (thresholded at 0) conditions SAM 2 as a mask
    input and is encoded into memory, binarised, as :meth:`Sam2Propagator.start` does. Frames 1..: SAM 2
    tracks from memory (:func:`track_frame`, as :meth:`Sam2Propagator.step`). The thresholds pass the
    gradient of the sigmoid of frame 0's logits (:func:`straight_through`), so a loss on a later frame reaches
    the prompter through memory attention, the memory encoder and the object pointer.
    """

    def __init__(self, engine: Any) -> None:
        if engine.model.sam.family != "sam2":
            raise InputError("mask-tube training through memory needs a SAM 2 model")
        self.engine = engine
        self.sam2 = engine.model.sam.model
        self.size = int(self.sam2.image_size)
        autograd_rope_tables(self.sam2)  # the process may have propagated a video under inference_mode

    @torch.no_grad()
    def frame_features(self, image: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], list]:
        """SAM 2's flat features of one frame (1, 3, S, S) in [0, 1] (frozen)."""
        out = self.sam2.forward_image(self.engine.model.sam.preprocess(image))
        return flat_backbone_features(self.sam2, out)

    def __call__(self, tube: TubeFrames, support: Any, prompter: Any) -> list[torch.Tensor] | None:
        """Low-res logits (1, 1, S/4, S/4) of every frame of ``tube`` with ``support`` (the label's K shots,
        SupportFeatures) as its examples; None when the cold start finds no foreground prior on frame 0."""
        from ..engines.dcsam_engine import pick_candidate  # late: loads SAM's builders

        engine, m, size = self.engine, self.sam2, self.size
        query = tube.views[0][0]
        pos, neg = engine.model.priors(query, support)
        out = engine.prompted_logits(query.sam, pos, neg, support, prompter)
        if out is None:
            return None
        logits, iou_pred, region = out
        best, _, _ = pick_candidate(logits, iou_pred, region)
        z0 = logits[:, best : best + 1].float()
        soft = torch.sigmoid(F.interpolate(z0, size=(size, size), mode="bilinear", align_corners=False))
        mask_in = straight_through((soft > 0.5).float(), soft)
        feats0 = tube.features[0]
        n = len(tube.features)
        cond = track_frame(m, 0, feats0, ({}, {}), n, mask_inputs=mask_in, run_mem_encoder=False)
        high = F.interpolate(cond["pred_masks"].float(), size=(size, size), mode="bilinear", align_corners=False)
        mem_mask = straight_through((high > 0).float(), soft)  # memory of a prompted frame: binarised
        feats, pos_enc = encode_memory(m, feats0[0], feats0[2], mem_mask, cond["object_score_logits"])
        memory = {0: {**cond, "maskmem_features": feats, "maskmem_pos_enc": pos_enc}}
        non_cond: dict[int, dict] = {}
        outs = [z0]
        for t in range(1, n):
            cur = track_frame(m, t, tube.features[t], (memory, non_cond), n)
            non_cond[t] = cur
            outs.append(cur["pred_masks"])
        return outs


def encode_tubes(engine: Any, tubes: Sequence[MaskTube], max_frames: int, seed: int) -> list[TubeFrames]:
    """Every frame of every tube encoded once (a one-frame tube: its pseudo-frames)."""
    from ..engines.dcsam_engine import to_tensor  # late: loads SAM's builders

    fwd = PrompterTubeForward(engine)
    rng = np.random.default_rng(seed)
    low = fwd.size // 4
    out = []
    for tube in tubes:
        frames = _tube_frames(tube, max_frames, rng)
        views, features, targets = [], [], []
        for fr in frames:
            query, support, _ = engine.encode_view(fr)
            views.append((query, support))
            with engine.autocast():
                features.append(fwd.frame_features(to_tensor(fr.image, fwd.size, engine.device)))
            small = cv2.resize(fr.mask.astype(np.float32), (low, low), interpolation=cv2.INTER_AREA)
            targets.append(torch.from_numpy(small).to(engine.device)[None, None])
        out.append(TubeFrames(tube.label, views, features, targets))
    return out


def finetune_project_prompter_on_tubes(
    engine: Any,
    tubes: Sequence[MaskTube],
    *,
    steps: int | None = None,
    max_frames: int = 5,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Train a DC-SAM cold start's project prompter on mask tubes through SAM 2's memory
    (:class:`PrompterTubeForward`); SAM 2, the backbone and DC-SAM's prior stay frozen.

    Each step draws one tube as the query and one frame of another tube of its label as the example (1-shot;
    a label with one tube: one of the tube's later frames), drawing again (up to 4 times) where the cold start
    finds no foreground prior on the tube's first frame; loss: BCE + Dice over all of the tube's frames
    (:func:`tube_loss`). Starts from the engine's prompter if it has one, else from an untrained one (the cold
    start exactly). Options (``config.options``): ``project_steps`` (default
    :func:`~dcsam.training.project.schedule_steps` of the tube count), ``project_lr`` (2e-3, cosine decay),
    ``seed`` (0). ``steps=0``: the weights as they are.
    """
    if engine.trained:
        raise InputError("the engine serves a trained prompt generator: use finetune_prompt_generator_on_tubes")
    t0 = time.perf_counter()
    opts = engine.config.options
    seed = int(opts.get("seed", 0))
    total = int(steps if steps is not None else opts.get("project_steps") or schedule_steps(len(tubes)))
    if not tubes:
        raise InputError("no mask tubes to train on")
    if total <= 0:  # 0 steps: the cold start (or the prompter it holds), as the cross-validation compares
        return finetune_figures([], 0, len(tubes), t0)
    fwd = PrompterTubeForward(engine)
    encoded = encode_tubes(engine, tubes, max_frames, seed)
    rng = np.random.default_rng(seed)
    lr = float(opts.get("project_lr", 2e-3))
    prompter = engine.prompter if engine.prompter is not None else engine.new_prompter(seed)
    optimizer = torch.optim.AdamW(prompter.parameters(), lr=lr, weight_decay=1e-4)
    skipped = 0

    def example_for(q: int) -> Any:
        others = [t for i, t in enumerate(encoded) if i != q and t.label == encoded[q].label]
        if others:
            tube = others[int(rng.integers(len(others)))]
            return tube.views[int(rng.integers(len(tube.views)))][1]
        views = encoded[q].views
        return views[1 + int(rng.integers(len(views) - 1))][1] if len(views) > 1 else views[0][1]

    def step_loss(step: int) -> torch.Tensor:
        nonlocal skipped
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(lr, step, total)
        for _ in range(4):  # a few draws: the prior check comes before SAM, so a miss costs little
            q = int(rng.integers(len(encoded)))
            with engine.autocast():
                logits = fwd(encoded[q], SupportFeatures.cat([example_for(q)]), prompter)
            if logits is not None:
                return tube_loss(logits, encoded[q].targets)
            skipped += 1  # no foreground prior on frame 0: the cold start answers empty, nothing to learn
        return sum((p.sum() * 0.0 for p in prompter.parameters()), torch.zeros((), device=engine.device))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        losses = optimise(prompter, optimizer, step_loss, total, progress)
    engine.load_trainable_state_dict({"project_prompter": prompter.state_dict(), "format": 1})
    figures = finetune_figures(losses, total, len(tubes), t0)
    figures.update(frames=sum(len(t.views) for t in encoded), skipped_queries=skipped, through_memory=True)
    return figures


def finetune_on_tubes(
    segmenter: Any,
    tubes: Sequence[MaskTube],
    *,
    steps: int | None = None,
    progress: ProgressFn | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Mask-tube fine-tuning for whichever engine ``segmenter`` runs.

    lite: :func:`finetune_lite_on_tubes`. dcsam (SAM 2): :func:`finetune_prompt_generator_on_tubes`
    with each tube's first frame as the support and the rest as the query tube (a one-frame tube:
    the frame itself as support, its pseudo-frames as the query tube). The DC-SAM cold start (no trained
    generator) trains its project prompter: through SAM 2's memory (:func:`finetune_project_prompter_on_tubes`),
    or on SAM 1 on the tubes' frames as image episodes.
    """
    seg = getattr(segmenter, "segmenter", segmenter)
    if seg.engine.name == "lite":
        return finetune_lite_on_tubes(seg, tubes, steps=steps, progress=progress, **kwargs)
    if not seg.engine.trained and seg.engine.model.sam.family == "sam2":
        figures = finetune_project_prompter_on_tubes(seg.engine, tubes, steps=steps, progress=progress, **kwargs)
        return {**figures, "tubes": len(tubes)}
    if not seg.engine.trained:
        # SAM 1 has no memory to train through: the project prompter learns from the tubes' frames as images
        episodes = lite_tube_episodes(tubes, int(kwargs.get("max_frames", 5)))
        figures = seg.engine.finetune(episodes, steps=steps, progress=progress)
        return {**figures, "tubes": len(tubes), "frames": sum(1 + len(e.query) for e in episodes)}
    pairs = []
    rng = np.random.default_rng(int(kwargs.pop("seed", 0)))
    for tube in tubes:
        frames = _nonempty_frames(tube)
        if len(frames) >= 3:
            pairs.append((frames[0], MaskTube(tube.label, frames[1:])))
        else:
            pairs.append((frames[0], MaskTube(tube.label, pseudo_tube(frames[-1].image, frames[-1].mask, rng))))
    return finetune_prompt_generator_on_tubes(
        seg.engine, pairs, steps=100 if steps is None else steps, progress=progress, **kwargs
    )
