"""The SAM-free ``lite`` engine: frozen EfficientNet-Lite0 features, k-NN fore/background matching,
edge-aware refinement, and an optional small head fine-tuned from a few labelled images.

Pipeline for one query and one label (all switches live in ``config.options``, see ``DEFAULTS``):

1. Dense features of the query at a bounded working resolution (long side ``size`` once a head is
   trained; before, the image's own long side up to ``detail_size``, and the examples' features at
   theirs; optionally more sizes, ``query_sizes``, averaged), stride-8 grid, layers ``layers``.
2. Positive / negative priors: mean of the ``k`` best cosine similarities to the examples'
   foreground / background features (``match``); logit = (pos - neg) / ``temperature``.
3. Optional trained head: a residual on that logit (zero until fine-tuned).
4. Optional colour model: ``colour`` x the log-ratio of fg/bg colour histograms of the examples.
5. Refinement (``refine``): ``bilinear`` | ``guided`` (colour guided filter at the working size,
   coefficients upsampled to full resolution) | ``grabcut`` (GrabCut at the working size, then the
   guided upsampling); ``components`` drops weak connected components. Once fine-tuned, a label
   whose labelled masks (supports and fine-tuning images) were all one object keeps only the
   most confident component of its predictions (``single_instance``): a learnt "one instance" cue that
   removes look-alike distractors (e.g. a second car of the same colour).
6. Training-free image queries only: the mask grown to where the image's own colours change
   (``image_boundary``, :mod:`dcsam.lite.boundary`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..config import SegmenterConfig, coerce_options
from ..errors import CheckpointError, InputError
from ..lite import postprocess
from ..lite.backbone import lite_backbone
from ..lite.boundary import snap_to_colour
from ..lite.head import LiteHead
from ..lite.matching import MatchBank, dense_features, mask_fraction, priors, resize_image, working_size
from ..lite.quality import calibrated_score, mask_signals
from ..masks import resize_mask
from ..training.loop import finetune_figures, optimise
from ..training.losses import soft_bce_dice_loss
from .base import Engine, Episode, LabelledImage, ProgressFn, Prompts, SegmentResult

log = logging.getLogger(__name__)

# (foreground probability, refined probability, guided-filter coefficients or None) at the working size
WorkMaps = tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray] | None]

DEFAULTS: dict[str, Any] = {
    "output_stride": 16,  # 16 = last blocks dilated (finer deep features, default); 32 = plain, 8 = slowest
    "size": 512,  # working long side (features, priors, refinement); full resolution only at the end
    # the working long side of a training-free image query and of its examples' matching features: the
    # image's own long side up to this (more pixels add no detail, and cost); an image smaller than
    # ``size`` is enlarged to it (the trained head and fine-tuning keep ``size``). At 512 a stride-8
    # cell of an 854x480 frame is 13 px across: a limb or a small animal is a cell or two wide and its
    # mixed cells go to the background
    "detail_size": 768,
    # extra test-time sizes of a training-free image query: its priors are averaged over them and
    # `size` (video frames and fine-tuning use `size` alone); None = [size]. [640] measured on
    # davis16-dev image one-shot: 0.718 -> 0.720 (hard videos 0.609 -> 0.607), not worth its time
    "query_sizes": None,
    "layers": [2, 4, 6],  # EfficientNet-Lite0 blocks: 2 = stride 8, 4 = stride 16, 6 = stride 32
    # each cell's features averaged with the mirrored image's (dcsam.lite.matching.dense_features), for
    # every image, example and frame. davis16-dev without -> with: video J&F 0.800 -> 0.803, image
    # one-shot 0.754 -> 0.762, across videos 0.717 -> 0.740; perseg-mini 0.946 -> 0.949; fss-mini,
    # every ordered pair, 0.720 -> 0.717. The backbone runs on a batch of two
    "mirror": True,
    "match": "knn",  # knn | max | prototype
    "k": 5,
    "temperature": 0.05,
    "colour": 0.0,  # weight of the colour log-likelihood ratio (0 = off), training-free video frames
    # the same weight for training-free image queries (predict, score_mask). An instance cue: 0.5 (with
    # query_sizes [640]) lifts davis16-dev image one-shot 0.718 -> 0.737 but fss-mini (a class
    # across images) 0.810 -> 0.713, so it stays off by default
    "image_colour": 0.0,
    "colour_finetuned": 0.5,  # the same weight once the head is fine-tuned (the head learns with it)
    # training-free image queries grown to where their own colours change (dcsam.lite.boundary, as
    # video frames are): a limb or a rim that fills too little of a stride-8 cell to win it comes
    # back. davis16-dev image one-shot 0.751 -> 0.754, perseg-mini 0.946 -> 0.947, fss-mini 0.810 ->
    # 0.821. A fine-tuned head weighs colour in its own decision and is left as it is
    "image_boundary": True,
    "refine": "guided",  # bilinear | guided | grabcut
    "guided_radius": 6,
    "guided_eps": 1e-3,
    "grabcut_iters": 3,
    "components": "weighted",  # none | largest | weighted | confident
    "keep_ratio": 0.2,
    "threshold": 0.5,
    # fine-tuning
    "hidden": 64,
    "steps": 120,  # at most; runs stop earlier once the loss plateaus (the backend's DCSAM_TRAIN_PATIENCE)
    # and at most this many passes over each training pair: a 3-task project's fold has 2 pairs, and
    # 120 steps of them is 120 passes; on three PerSeg 3-task projects, 20, 40, 60 and 120 steps scored
    # within 0.01 of each other (cross-validated mIoU), so the extra passes bought nothing
    "epochs": 30,
    "lr": 1e-2,
    "batch": 4,
    "seed": 0,
    "memory": True,  # fine-tuning images also join their label's matching memory (saved with the head)
    # fine-tuned mode: if every labelled mask of a label (supports + fine-tuning images) is one
    # object (one connected component), keep only the most confident component of its predictions
    "single_instance": True,
}

# options a trained head depends on (saved with it, checked on load)
MEMORY_MAX_BG = 2000  # background features kept per fine-tuning image
MEMORY_MAX_PER_LABEL = 64  # newest fine-tuning images kept per label (matching cost grows with the memory)
HEAD_OPTIONS = ("output_stride", "size", "layers", "mirror", "match", "k", "temperature", "colour_finetuned", "hidden")


def channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def _bank_key(bank: MatchBank) -> str:
    """Identity of a memory entry: its foreground features at the precision they are saved in."""
    return hashlib.sha1(bank.fg.detach().half().cpu().numpy().tobytes()).hexdigest()


def _int_list(value: Any) -> list[int] | None:
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        value = [v for v in value.replace(" ", "").split(",") if v]
    elif isinstance(value, (int, float)):
        value = [value]
    return [int(v) for v in value]


def _is_single_object(mask: np.ndarray, min_share: float = 0.05, long_side: int = 256) -> bool:
    """True if ``mask`` is one object: one connected component holding all but specks (each other
    component under ``min_share`` of the foreground), judged at a small size."""
    h, w = mask.shape[:2]
    s = min(1.0, long_side / max(h, w))
    m = (resize_mask(mask, max(1, round(h * s)), max(1, round(w * s))) if s < 1.0 else mask).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    if n <= 1:
        return False
    areas = stats[1:, cv2.CC_STAT_AREA].astype(np.float64)
    return int((areas >= min_share * areas.sum()).sum()) == 1


def _box_cells(box: tuple[float, float, float, float], shape: tuple[int, int], sx: float, sy: float) -> np.ndarray:
    """bool ``shape`` (h, w): the cells of a grid with ``sx`` / ``sy`` cells per native pixel that the
    box ``(x0, y0, x1, y1)`` (native pixels) touches."""
    h, w = shape
    x0, x1 = sorted((box[0] * sx, box[2] * sx))
    y0, y1 = sorted((box[1] * sy, box[3] * sy))
    out = np.zeros((h, w), bool)
    out[max(0, int(np.floor(y0))) : min(h, int(np.ceil(y1))), max(0, int(np.floor(x0))) : min(w, int(np.ceil(x1)))] = (
        True
    )
    return out


def _normalise_options(o: dict[str, Any]) -> dict[str, Any]:
    """Accept options as typed values or as strings (e.g. from ``--option layers=2,4,6``)."""
    o = coerce_options(o, DEFAULTS)
    o["layers"] = _int_list(o["layers"]) or list(DEFAULTS["layers"])
    o["query_sizes"] = _int_list(o["query_sizes"])
    for key, allowed in (
        ("match", ("knn", "max", "prototype")),
        ("refine", ("bilinear", "guided", "grabcut")),
        ("components", ("none", "largest", "weighted", "confident")),
    ):
        o[key] = str(o[key])
        if o[key] not in allowed:
            raise ValueError(f"lite option {key}={o[key]!r}; choose one of {list(allowed)}")
    if any(i < 0 or i > 6 for i in o["layers"]):
        raise ValueError(f"lite option layers={o['layers']}: EfficientNet-Lite0 blocks are 0..6")
    return o


@dataclass
class LiteExample:
    """What :meth:`LiteEngine.encode_example` caches: matchable features and colour statistics."""

    bank: MatchBank  # at the engine's ``size``: what fine-tuning and a trained head match against
    colour: postprocess.ColourModel
    signature: tuple
    single_object: bool = True  # the example's mask is one object (the region score counts extra blobs)
    # the image and mask at the example's detail side (see the ``detail_size`` option) until the first
    # training-free query encodes them into ``detail`` (a training-only example never pays for it)
    detail_source: tuple[np.ndarray, np.ndarray] | None = None
    detail: MatchBank | None = None


@dataclass
class LiteQuery:
    """One query image encoded by :meth:`LiteEngine.encode_query`."""

    feats: dict[int, torch.Tensor]  # working long side -> (C, h, w) features
    base: int  # the working long side of the main grid
    work_image: np.ndarray  # uint8 RGB at the main working size
    image: np.ndarray  # the original image

    @property
    def grid(self) -> tuple[int, int]:
        h, w = self.feats[self.base].shape[-2:]
        return h, w

    @property
    def cell_side(self) -> float:
        """The side of one cell of :attr:`grid` in the original image's pixels."""
        return self.image.shape[0] / self.grid[0]


class LiteEngine(Engine):
    """The lite engine. Besides the :class:`Engine` contract it exposes its stages, which video
    propagation recombines per frame: :meth:`encode_query` (features of one image, shared by every
    label), :meth:`grid_logit` (matching logit against a bank of example features),
    :meth:`decode_logit` (refinement to a full-resolution mask), :meth:`components_mode`,
    :meth:`check_example` and :meth:`signature`."""

    name = "lite"

    def __init__(self, config: SegmenterConfig):
        self.config = config
        unknown = sorted(set(config.options) - set(DEFAULTS))
        if unknown:
            raise ValueError(f"unknown lite option(s) {unknown}; known: {sorted(DEFAULTS)}")
        self.opts = _normalise_options({**DEFAULTS, **config.options})
        self.device = config.resolved_device()
        random = bool(getattr(config, "random_backbone_weights", getattr(config, "random_weights", False)))
        self.backbone = lite_backbone(
            int(self.opts["output_stride"]), config.backbone_weights, random, variant=config.backbone
        ).to(self.device)
        stage_channels = self.backbone.stage_channels
        self.feat_channels = sum(stage_channels[i] for i in self.opts["layers"])
        self.head = LiteHead(self.feat_channels, int(self.opts["hidden"])).to(self.device)
        self.head.eval()
        self.trained = False
        self.memory: dict[str, list[LiteExample]] = {}  # label -> labelled images seen in fine-tuning
        self.single_instance: dict[str, bool] = {}  # label -> all its labelled masks were one object
        self._last_query: tuple[Any, LiteQuery] | None = None  # see _query

    # -- features -------------------------------------------------------------------------------
    def signature(self, long_side: int | None = None) -> tuple:
        """The settings an encoded example depends on (examples encoded under others do not match);
        ``long_side``: a working size other than the ``size`` option (see :meth:`encode_query`)."""
        o = self.opts
        size = int(o["size"]) if long_side is None else int(long_side)
        return (
            self.config.backbone,
            int(o["output_stride"]),
            size,
            tuple(o["layers"]),
            bool(o["mirror"]),
            int(o["detail_size"]),
        )

    def working_side(self, shape: tuple[int, int], cap: int | None = None) -> int:
        """The working long side of a training-free image of ``shape`` (h, w): ``cap`` (default: the
        ``detail_size`` option), but no more than the image's own long side unless that is below the
        ``size`` option (small images are enlarged to it, as for training)."""
        cap = int(self.opts["detail_size"]) if cap is None else int(cap)
        return min(cap, max(max(shape), int(self.opts["size"])))

    def _features(
        self, image: np.ndarray, long_side: int, low_precision: bool = False
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        size = working_size(image.shape[0], image.shape[1], long_side)
        feats = self._dense_features(image, size, low_precision)
        return feats, size

    def _dense_features(self, image: np.ndarray, size: tuple[int, int], low_precision: bool = False) -> torch.Tensor:
        o = self.opts
        return dense_features(
            self.backbone, image, size, tuple(o["layers"]), self.device, low_precision, mirror=bool(o["mirror"])
        )

    def encode_example(
        self, example: LabelledImage, *, long_side: int | None = None, low_precision: bool = False
    ) -> LiteExample:
        """An example's matchable features and colour statistics at the working long side ``size`` (or
        ``long_side``); ``low_precision``: see :meth:`encode_query`. Without ``long_side``, an image whose
        detail side (:meth:`working_side`) differs also keeps what :meth:`example_bank` needs."""
        image, mask = example.image, example.mask
        if mask.shape != image.shape[:2]:
            raise InputError(
                f"example mask is {mask.shape[1]}x{mask.shape[0]} but its image is {image.shape[1]}x{image.shape[0]}"
            )
        if not mask.any():
            raise InputError("the example mask is empty: an example needs at least one foreground pixel")
        explicit_side = long_side
        long_side = int(self.opts["size"]) if long_side is None else int(long_side)
        feats, size = self._features(image, long_side, low_precision)
        frac = mask_fraction(mask, (feats.shape[-2], feats.shape[-1]))
        bank = MatchBank.from_example(feats, frac)
        small_mask = resize_mask(mask, *size)
        colour = postprocess.ColourModel().add(resize_image(image, size), small_mask)
        detail_source = None
        if explicit_side is None and (side := self.working_side(image.shape[:2])) != long_side:
            detail_size = working_size(image.shape[0], image.shape[1], side)
            detail_source = (resize_image(image, detail_size), resize_mask(mask, *detail_size))
        return LiteExample(
            bank=bank,
            colour=colour,
            signature=self.signature(long_side),
            single_object=_is_single_object(mask),
            detail_source=detail_source,
        )

    def example_bank(self, ex: LiteExample) -> MatchBank:
        """The features a query is matched against: once trained, the example's bank at ``size`` (what the
        head learnt on); before, its bank at its detail side (see ``detail_size``; encoded on first use)."""
        detail, source = ex.detail, ex.detail_source  # read once: a concurrent query may encode it meanwhile
        if self.trained or (detail is None and source is None):
            return ex.bank
        if detail is None and source is not None:
            image, mask = source
            feats = self._dense_features(image, image.shape[:2])
            detail = MatchBank.from_example(feats, mask_fraction(mask, (feats.shape[-2], feats.shape[-1])))
            ex.detail, ex.detail_source = detail, None  # the bank replaces the pixels
        return detail if detail is not None else ex.bank

    def encode_query(
        self,
        image: np.ndarray,
        extra_sizes: Sequence[int] | None = None,
        *,
        long_side: int | None = None,
        low_precision: bool = False,
    ) -> LiteQuery:
        """uint8 (H, W, 3) image -> its features at the working long side ``size`` (or ``long_side``;
        main grid (h, w) at stride 8) and at each of ``extra_sizes``, and the image resized to the
        working size. The matching compares unit features, so a query may be matched against examples
        encoded at another working size (video frames, whose objects are often small, use a larger one).
        ``low_precision``: the backbone runs in bfloat16 where that pays (video frames: about 10 % of a
        frame's time saved, J&F unchanged on davis16-dev at three decimals)."""
        base = int(self.opts["size"]) if long_side is None else int(long_side)
        sizes = sorted({base, *[int(s) for s in (extra_sizes or [])]})
        feats = {s: self._features(image, s, low_precision)[0] for s in sizes}
        work = resize_image(image, working_size(image.shape[0], image.shape[1], base))
        return LiteQuery(feats=feats, base=base, work_image=work, image=image)

    # -- decoding ---------------------------------------------------------------------------------
    def _prior_maps(self, q: LiteQuery, banks: MatchBank | Sequence[MatchBank]) -> torch.Tensor:
        """(3, h, w): training-free logit, positive prior, negative prior on the main grid, matching
        ``q`` against the union of ``banks``."""
        o = self.opts
        grid = q.grid
        maps = []
        for f in q.feats.values():
            pos, neg = priors(f, banks, o["match"], int(o["k"]))
            m = torch.stack([pos, neg])
            if m.shape[-2:] != grid:
                m = F.interpolate(m[None], size=grid, mode="bilinear", align_corners=False)[0]
            maps.append(m)
        pos, neg = torch.stack(maps).mean(0)
        logit = (pos - neg) / float(o["temperature"])
        return torch.stack([logit, pos, neg])

    def _colour_weight(self, trained: bool | None = None) -> float:
        trained = self.trained if trained is None else trained
        return float(self.opts["colour_finetuned"] if trained else self.opts["colour"])

    def _image_colour_weight(self) -> float:
        return float(self.opts["colour_finetuned"] if self.trained else self.opts["image_colour"])

    def _head_input(self, prior_maps: torch.Tensor) -> torch.Tensor:
        return torch.stack([prior_maps[0] * 0.25, prior_maps[1], prior_maps[2]])

    def grid_logit(self, q: LiteQuery, banks: MatchBank | Sequence[MatchBank]) -> torch.Tensor:
        """(h, w) foreground logit of ``q`` on its main grid: k-NN matching against ``banks`` (the
        examples' features: pass them as a list rather than concatenated, so that each bank's matches
        of ``q`` are computed once, see :mod:`dcsam.lite.matching`), plus the fine-tuned head's residual
        when there is one."""
        pm = self._prior_maps(q, banks)
        logit = pm[0]
        if self.trained:
            with torch.no_grad():
                logit = logit + self.head(q.feats[q.base][None], self._head_input(pm)[None])[0, 0]
        return logit

    def components_mode(self, label: str) -> str:
        """The connected-component filter for ``label``: ``confident`` once fine-tuning has learnt
        that its objects come one at a time, else the ``components`` option."""
        if self.trained and self.opts["single_instance"] and self.single_instance.get(label, False):
            return "confident"
        return str(self.opts["components"])

    def _work_maps(
        self, q: LiteQuery, logit: torch.Tensor, colour: postprocess.ColourModel | None, weight: float | None = None
    ) -> WorkMaps:
        """(foreground probability, refined probability, guided coefficients or None), each (wh, ww)
        at the working size, of a logit of ``q`` (any size, upsampled bilinearly). ``weight``: the
        colour model's weight (None: the ``colour`` option, or ``colour_finetuned``)."""
        o = self.opts
        cw = self._colour_weight() if weight is None else float(weight)
        wh, ww = q.work_image.shape[:2]
        z = (
            F.interpolate(logit[None, None].float(), size=(wh, ww), mode="bilinear", align_corners=False)[0, 0]
            .cpu()
            .numpy()
        )
        if colour is not None and cw:
            z = z + cw * colour.log_ratio(q.work_image)
        prob = 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))
        method = o["refine"]
        if method == "bilinear":
            return prob, prob, None
        if method in ("guided", "grabcut"):
            guide = postprocess.to_float_rgb(q.work_image)
            p = prob
            if method == "grabcut":
                p = postprocess.grabcut_refine(q.work_image, prob, int(o["grabcut_iters"])).astype(np.float32)
            a, b = postprocess.guided_coefficients(guide, p, int(o["guided_radius"]), float(o["guided_eps"]))
            return prob, postprocess.apply_guided(a, b, guide), (a, b)
        raise ValueError(f"unknown refine {method!r}; use bilinear, guided or grabcut")

    def decode_logit(
        self,
        q: LiteQuery,
        logit: torch.Tensor,
        colour: postprocess.ColourModel | None,
        components: str | None = None,
        *,
        single_object: bool = False,
        calibrated: bool = False,
        colour_weight: float | None = None,
    ) -> SegmentResult:
        """A logit of ``q`` (any size, upsampled to the working size) -> the refined mask at the
        image's native (H, W): colour model (``colour``: the label's colour statistics, None for
        none), refinement, component filter ``components`` (None: the ``components`` option).

        ``extra`` holds ``confidence`` (the mean foreground probability over the mask) and ``quality``
        (the calibrated IoU estimate of :mod:`dcsam.lite.quality`; ``single_object``: the label's
        examples are one object each). ``score`` is ``quality`` when ``calibrated``, else ``confidence``
        (what video propagation's memory gate was tuned on). ``colour_weight``: see :meth:`_work_maps`.
        """
        o = self.opts
        components = str(o["components"]) if components is None else components
        prob, q_work, coef = self._work_maps(q, logit, colour, colour_weight)
        thr = float(o["threshold"])
        work_mask = q_work > thr
        kept = postprocess.filter_components(work_mask, q_work, components, float(o["keep_ratio"]))
        drop = None
        if components != "none" and (work_mask & ~kept).any():
            drop = cv2.dilate((work_mask & ~kept).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
            drop &= ~kept
        h, w = q.image.shape[:2]
        if coef is None:
            mask = postprocess.upsample_linear(q_work, (h, w), drop, thr)
        else:
            mask = postprocess.upsample_guided(coef[0], coef[1], q.image, drop, thr)
        if not mask.any():
            kept = np.zeros_like(kept)
        signals = mask_signals(kept, prob, q_work, single_object)
        quality = calibrated_score(signals)
        return SegmentResult(
            mask=mask,
            score=quality if calibrated else signals.confidence,
            extra={
                "area": float(mask.mean()),
                "confidence": signals.confidence,
                "quality": quality,
                **signals.as_dict(),
            },
        )

    def check_example(self, ex: Any) -> LiteExample:
        """``ex`` if this engine encoded it under its current settings; InputError otherwise."""
        if not isinstance(ex, LiteExample):
            raise InputError(f"the lite engine cannot use an example encoded by another engine ({type(ex).__name__})")
        if ex.signature != self.signature():
            raise InputError(f"example encoded with lite settings {ex.signature}, engine uses {self.signature()}")
        return ex

    def _prepare(
        self, label: str | None, examples: Sequence[Any]
    ) -> tuple[list[MatchBank], postprocess.ColourModel | None, bool]:
        """One label's examples (plus its fine-tuning memory) -> (their match banks, colour model or
        None, every example is one object)."""
        exs = [self.check_example(e) for e in examples]
        if not exs:
            raise InputError(f"no examples for label {label!r}")
        exs = exs + (self.memory.get(label, []) if label is not None else [])
        colour = exs[0].colour.merged([e.colour for e in exs[1:]]) if self._image_colour_weight() else None
        return [self.example_bank(e) for e in exs], colour, all(e.single_object for e in exs)

    def _query(self, image: np.ndarray) -> LiteQuery:
        """:meth:`encode_query`, remembering the last image: an interactive refinement predicts,
        prompts and scores the same image, and encoding it is most of the cost."""
        image = np.ascontiguousarray(image)
        # a fine-tuned head was trained on single-size priors at ``size``: it gets those
        sizes = () if self.trained else tuple(self.opts["query_sizes"] or ())
        side = int(self.opts["size"]) if self.trained else self.working_side((image.shape[0], image.shape[1]))
        key = (image.shape, sizes, side, hashlib.blake2b(image.data, digest_size=16).digest())
        if self._last_query is not None and self._last_query[0] == key:
            return self._last_query[1]
        if sizes or side != int(self.opts["size"]):
            q = self.encode_query(image, sizes, long_side=side)
        else:  # the very call that training's warm-up makes: one cached encoding per image
            q = self.encode_query(image)
        self._last_query = (key, q)
        return q

    def predict(
        self, images: Sequence[np.ndarray], examples: Mapping[str, Sequence[Any]]
    ) -> list[dict[str, SegmentResult]]:
        prepared = {label: self._prepare(label, exs) for label, exs in examples.items()}
        out = []
        for image in images:
            q = self._query(image)
            out.append(
                {
                    label: self._snap_to_colour(
                        q,
                        self.decode_logit(
                            q,
                            self.grid_logit(q, banks),
                            colour,
                            self.components_mode(label),
                            single_object=single,
                            calibrated=True,
                            colour_weight=self._image_colour_weight(),
                        ),
                    )
                    for label, (banks, colour, single) in prepared.items()
                }
            )
        return out

    def _snap_to_colour(self, q: LiteQuery, result: SegmentResult) -> SegmentResult:
        """``result`` of a training-free image query grown to its colour edge (``image_boundary``)."""
        if self.trained or not self.opts["image_boundary"] or not result.mask.any():
            return result
        result.mask = snap_to_colour(q.image, result.mask, q.cell_side)
        result.extra["area"] = float(result.mask.mean())
        return result

    # -- prompts ---------------------------------------------------------------------------------------
    # The lite engine has no promptable model of its own (``prompt`` stays None): dcsam.prompting answers
    # clicks and boxes by GrabCut seeded with the in-context mask; this engine judges the result.
    def score_mask(self, image: np.ndarray, mask: np.ndarray, prompts: Prompts) -> float | None:
        """The calibrated score (estimated IoU) of any bool (H, W) ``mask`` of ``image``: the signals of
        :mod:`dcsam.lite.quality` against the label's matching evidence, in which the prompts count
        as certain (clicked discs, the outside of a box). None without examples (no evidence)."""
        if not prompts.examples:
            return None
        banks, colour, single = self._prepare(prompts.label, prompts.examples)
        q = self._query(image)
        prob, refined, _ = self._work_maps(q, self.grid_logit(q, banks), colour, self._image_colour_weight())
        prob, refined = prob.copy(), refined.copy()
        wh, ww = q.work_image.shape[:2]
        h, w = image.shape[:2]
        sx, sy = ww / w, wh / h
        if prompts.box is not None:
            outside = ~_box_cells(prompts.box, (wh, ww), sx, sy)
            prob[outside] = refined[outside] = 0.0
        radius = max(2, round(0.012 * max(wh, ww)))  # the click disc of dcsam.prompting
        for x, y, positive in prompts.points:
            disc = np.zeros((wh, ww), np.uint8)
            cv2.circle(disc, (round(x * sx), round(y * sy)), radius, 1, -1)
            prob[disc > 0] = refined[disc > 0] = 1.0 if positive else 0.0
        small = resize_mask(np.asarray(mask, bool), wh, ww)
        return calibrated_score(mask_signals(small, prob, refined, single))

    # -- learning ------------------------------------------------------------------------------------
    def _new_head(self) -> LiteHead:
        return LiteHead(self.feat_channels, int(self.opts["hidden"])).to(self.device)

    def finetune(
        self, episodes: Sequence[Episode], *, steps: int | None = None, progress: ProgressFn | None = None
    ) -> dict[str, Any]:
        """Train the head on every ordered pair (example -> target) of labelled images per episode."""
        o = self.opts
        t0 = time.perf_counter()
        seed = int(o["seed"])
        rng = np.random.default_rng(seed)
        pairs: list[tuple[list[LiteExample], LiteQuery, np.ndarray]] = []  # (sources, target query, its mask)
        memory_add: dict[str, list[LiteExample]] = {}
        single: dict[str, bool] = {}
        use_memory = bool(o["memory"])
        for ep in episodes:
            items = list(ep.support) + list(ep.query)
            single[ep.label] = single.get(ep.label, True) and all(_is_single_object(li.mask) for li in items)
            encoded = []
            for li in items:
                ex = self.encode_example(li)  # validates the mask too
                encoded.append((ex, self.encode_query(li.image), li.mask))
            known = self.memory.get(ep.label, [])
            for j, (_, q_j, mask_j) in enumerate(encoded):
                others = [e for i, (e, _, _) in enumerate(encoded) if i != j]
                # single example -> target, and (with memory) everything else -> target, as at inference
                sources = [[e] for e in others]
                if use_memory and len(others) > 1:
                    sources.append(others + known)
                pairs += [(src, q_j, mask_j) for src in sources]
            if use_memory:
                memory_add.setdefault(ep.label, []).extend(e for e, _, _ in encoded[len(ep.support) :])
        if not pairs:
            raise InputError("fine-tuning needs episodes with at least two labelled images (support + query)")
        batch = max(1, min(int(o["batch"]), len(pairs)))
        if steps is None:
            total = min(int(o["steps"]), math.ceil(float(o["epochs"]) * len(pairs) / batch))
        else:
            total = int(steps)
        # a 0-step run only extends the memory: its head never sees the samples
        samples = []
        if total > 0:
            # each query's features once in the head's channels-last layout, shared by its samples
            grids = {id(q): channels_last(q.feats[q.base][None]) for _, q, _ in pairs}
            samples = [self._training_sample(src, q, mask, grids[id(q)]) for src, q, mask in pairs]

        def step_loss(step: int) -> torch.Tensor:
            by_shape: dict[tuple[int, ...], list[tuple[torch.Tensor, ...]]] = {}
            for k in rng.choice(len(samples), batch, replace=False):
                sample = samples[k]
                if rng.random() < 0.5:  # horizontal flip
                    sample = tuple(t.flip(-1) for t in sample)
                by_shape.setdefault(tuple(sample[0].shape), []).append(sample)
            # one head call per grid size: the same sum of per-sample losses, far fewer small convolutions
            loss = torch.zeros((), device=self.device)
            for group in by_shape.values():
                parts = list(zip(*group, strict=True))
                feats, hin = torch.cat(parts[0]), torch.cat(parts[1])  # channels-last batches (cat keeps it)
                base, offset, target = (torch.stack(t) for t in parts[2:])
                z = base + offset + head(feats, hin)[:, 0]
                loss = loss + len(group) * soft_bce_dice_loss(z, target)
            return loss / batch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            head = self.head if self.trained else self._new_head()
            # oneDNN's convolutions (forward and backward) run ~25 % faster in channels-last layout on CPU
            head.to(memory_format=torch.channels_last)
            optim = torch.optim.AdamW(head.parameters(), lr=float(o["lr"]), weight_decay=1e-4)
            losses = optimise(head, optim, step_loss, total, progress)
        head.to(memory_format=torch.contiguous_format)
        head.eval()
        self.head = head
        self.trained = True
        for label, flag in single.items():
            self.single_instance[label] = self.single_instance.get(label, True) and flag
        for label, exs in memory_add.items():
            kept = self.memory.setdefault(label, [])
            # fine-tuning again from a fine-tuned state sees the same images again: keep each one once
            seen = {_bank_key(e.bank) for e in kept}
            for e in exs:
                entry = LiteExample(bank=e.bank.memory_form(MEMORY_MAX_BG), colour=e.colour, signature=e.signature)
                key = _bank_key(entry.bank)
                if key not in seen:
                    seen.add(key)
                    kept.append(entry)
            del kept[:-MEMORY_MAX_PER_LABEL]
        return finetune_figures(losses, total, len(pairs), t0)

    def finetune_step_choices(self) -> list[int | None]:
        # 0 steps: the labelled images join the matching memory and the single-object rule is learnt, the
        # head stays at zero. With a few annotations per label that is sometimes better than training it.
        return [0, None]

    def _training_sample(
        self, sources: list[LiteExample], q: LiteQuery, mask: np.ndarray, grid_feats: torch.Tensor
    ) -> tuple:
        """(features (1, C, h, w) and head input (1, 3, h, w), both channels-last; training-free logit,
        colour offset and target fraction, each (h, w)) of one training pair; ``grid_feats``: ``q``'s
        main-grid features, channels-last."""
        pm = self._prior_maps(q, [e.bank for e in sources])
        grid = q.grid
        offset: np.ndarray = np.zeros(grid, np.float32)
        if self._colour_weight(trained=True):
            colour = sources[0].colour.merged([e.colour for e in sources[1:]])
            llr = colour.log_ratio(q.work_image)
            offset = self._colour_weight(trained=True) * cv2.resize(
                llr, (grid[1], grid[0]), interpolation=cv2.INTER_AREA
            )
        target = mask_fraction(mask, grid)
        return (
            grid_feats,
            channels_last(self._head_input(pm)[None]),
            pm[0],
            torch.from_numpy(offset).to(self.device),
            torch.from_numpy(target).to(self.device),
        )

    def trainable_state_dict(self) -> dict[str, Any]:
        if not self.trained:
            return {}
        return {
            "head": {k: v.detach().cpu().clone() for k, v in self.head.state_dict().items()},
            "feat_channels": self.feat_channels,
            "options": {k: self.opts[k] for k in HEAD_OPTIONS},
            "memory": {
                label: [{"fg": e.bank.fg.detach().cpu().half(), "bg": e.bank.bg.detach().cpu().half()} for e in exs]
                for label, exs in self.memory.items()
            },
            "single_instance": dict(self.single_instance),
            "format": 1,
        }

    def load_trainable_state_dict(self, state: Mapping[str, Any]) -> None:
        if not state:
            self.head = self._new_head().eval()
            self.trained = False
            self.memory = {}
            self.single_instance = {}
            return
        if "head" not in state:
            raise CheckpointError("lite head state: no 'head' entry")
        saved = dict(state.get("options", {}))
        if "options" in state:
            saved.setdefault("mirror", False)  # saved before the option: learnt on unmirrored features
        for key in ("layers", "hidden"):
            if key in saved and list(np.atleast_1d(saved[key])) != list(np.atleast_1d(self.opts[key])):
                raise CheckpointError(f"lite head was trained with {key}={saved[key]}, engine uses {self.opts[key]}")
        for key in HEAD_OPTIONS:
            if key in saved and saved[key] != self.opts[key]:
                log.warning("lite head was trained with %s=%r, engine uses %r", key, saved[key], self.opts[key])
        head = self._new_head()
        try:
            head.load_state_dict({k: torch.as_tensor(v) for k, v in state["head"].items()}, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"lite head state does not fit: {exc}") from exc
        memory: dict[str, list[LiteExample]] = {}
        for label, banks in dict(state.get("memory") or {}).items():
            memory[label] = []
            for b in banks:
                fg, bg = torch.as_tensor(b["fg"]).to(self.device), torch.as_tensor(b["bg"]).to(self.device)
                if (
                    fg.ndim != 2
                    or fg.shape[1] != self.feat_channels
                    or bg.ndim != 2
                    or bg.shape[1] != self.feat_channels
                ):
                    raise CheckpointError(
                        f"lite memory for {label!r} does not fit {self.feat_channels}-channel features"
                    )
                # colour statistics are not saved: an empty model adds nothing when merged
                memory[label].append(LiteExample(MatchBank(fg=fg, bg=bg), postprocess.ColourModel(), self.signature()))
        self.head = head.eval()
        self.memory = memory
        self.single_instance = {str(k): bool(v) for k, v in dict(state.get("single_instance") or {}).items()}
        self.trained = True

    @property
    def version(self) -> str:
        net = "effl" + self.config.backbone.removeprefix("efficientnet_lite")  # effl0, effl1, effl2
        if not self.trained:
            return f"lite-{net}-base"
        h = hashlib.sha1()
        for k, v in sorted(self.head.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        for label in sorted(self.single_instance):
            h.update(f"{label}={self.single_instance[label]}".encode())
        for label in sorted(self.memory):
            h.update(label.encode())
            for e in self.memory[label]:
                h.update(e.bank.fg.detach().cpu().half().numpy().tobytes())
                h.update(e.bank.bg.detach().cpu().half().numpy().tobytes())
        return f"lite-{net}-{h.hexdigest()[:10]}"
