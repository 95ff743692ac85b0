"""The DC-SAM engine: a trained prompt generator drives SAM; without one, a training-free
cold start prompts SAM with points and a box read off DC-SAM's prior masks."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..build import build_dcsam
from ..checkpoints import load_checkpoint, save_checkpoint, state_dict_digest
from ..config import SegmenterConfig
from ..errors import CheckpointError, InputError
from ..masks import iou, resize_mask
from ..modeling import DCSAM, QueryFeatures, SupportFeatures
from ..training.loop import finetune_figures, optimise
from ..training.losses import bce_dice_loss
from .base import Engine, Episode, LabelledImage, ProgressFn, SegmentResult

log = logging.getLogger(__name__)

PROMPT_GENERATOR_KIND = "dcsam-prompt-generator"
# Settings a prompt-generator checkpoint must agree with (they change its architecture or inputs).
ARCH_SETTINGS = ("sam", "backbone", "variant")


def save_prompt_generator(path, model: DCSAM, config: SegmenterConfig, **extra: Any) -> str:
    settings = {k: getattr(config, k) for k in (*ARCH_SETTINGS, "neg_stage2_source")}
    return save_checkpoint(path, PROMPT_GENERATOR_KIND, model.generator.state_dict(), settings, **extra)


def to_tensor(image: np.ndarray, size: int, device: torch.device | str) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (1, 3, size, size) in [0, 1]; resized on the CPU to bound memory."""
    h, w = image.shape[:2]
    interp = cv2.INTER_AREA if max(h, w) > size else cv2.INTER_LINEAR
    resized = cv2.resize(image, (size, size), interpolation=interp)
    return torch.from_numpy(resized).to(device).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)


def mask_tensor(mask: np.ndarray, size: int, device: torch.device | str) -> torch.Tensor:
    """bool (H, W) -> float (1, 1, size, size) with 0/1 (nearest-neighbour resize)."""
    return torch.from_numpy(resize_mask(mask, size, size)).to(device)[None, None].float()


def upsample_mask(logits: torch.Tensor, height: int, width: int) -> np.ndarray:
    """(1, h, w) logits -> bool (height, width) mask at the image's native size."""
    up = F.interpolate(logits[None].float(), size=(height, width), mode="bilinear", align_corners=False)
    return (up[0, 0] > 0).cpu().numpy()


class DCSAMEngine(Engine):
    """The DC-SAM engine. Its stages, for callers that time or recombine them: :meth:`encode_example`
    (support features), ``model.encode_query`` (query features of a (B, 3, S, S) batch, see
    :func:`to_tensor`), :meth:`predict_trained` / :meth:`predict_cold_start` (decoding), all under
    :meth:`autocast`."""

    name = "dcsam"

    def __init__(self, config: SegmenterConfig) -> None:
        self.config = config
        self.device = config.resolved_device()
        self.dtype = config.resolved_dtype()
        self.model = build_dcsam(config).to(self.device).eval()
        self.trained = False
        self._version_tag = "coldstart"
        if config.prompt_generator:
            self.load_prompt_generator(config.prompt_generator)
        else:
            log.info("DC-SAM: no trained prompt generator given; using the training-free cold start")

    # -- weights -------------------------------------------------------------------------------
    def load_prompt_generator(self, path) -> None:
        ckpt = load_checkpoint(path, PROMPT_GENERATOR_KIND)
        mismatched = {
            k: (ckpt["settings"].get(k), getattr(self.config, k))
            for k in ARCH_SETTINGS
            if ckpt["settings"].get(k) != getattr(self.config, k)
        }
        if mismatched:
            raise CheckpointError(f"{path}: trained for other settings (checkpoint vs current): {mismatched}")
        self.load_trainable_state_dict(ckpt["state_dict"])
        self.model.generator.neg_stage2_source = ckpt["settings"].get(
            "neg_stage2_source", self.config.neg_stage2_source
        )

    def trainable_state_dict(self) -> dict[str, Any]:
        return self.model.generator.state_dict() if self.trained else {}

    def load_trainable_state_dict(self, state: Mapping[str, Any]) -> None:
        from ..weights import load_strict

        if not state:  # no trained prompt generator: back to the cold start
            self.trained = False
            self._version_tag = "coldstart"
            return
        load_strict(self.model.generator, state, source="prompt-generator weights")
        self.trained = True
        self._version_tag = "pg-" + state_dict_digest(self.model.generator.state_dict())

    @property
    def version(self) -> str:
        random = "-random" if self.config.random_sam_weights or self.config.random_backbone_weights else ""
        return f"dcsam-{self.config.sam}-{self.config.backbone}-{self._version_tag}{random}"

    # -- fine-tuning -----------------------------------------------------------------------------
    def finetune(
        self, episodes: Sequence[Episode], *, steps: int | None = None, progress: ProgressFn | None = None
    ) -> dict[str, Any]:
        """Fine-tune the trained prompt generator on episodes; SAM and the backbone stay frozen.

        Every labelled image of an episode is a query once, with the episode's other images (at most
        as many as it has supports) as its shots. Each image is encoded once (frozen features).
        Options (``config.options``): ``finetune_steps`` (100), ``finetune_lr`` (1e-5: a small step away
        from the trained weights), ``seed`` (0).
        """
        if not self.trained:
            raise InputError(
                "the cold start has no trained prompt generator to fine-tune: train one with "
                "`dcsam train` and serve it (prompt_generator / DCSAM_PROMPT_GENERATOR) first"
            )
        t0 = time.perf_counter()
        size = self.model.sam.image_size
        samples: list[tuple[SupportFeatures, QueryFeatures, torch.Tensor]] = []
        for ep in episodes:
            items = [*ep.support, *ep.query]
            shots = max(1, len(ep.support))
            encoded = []
            for li in items:
                support = self.encode_example(li)
                with torch.no_grad(), self.autocast():
                    query = self.model.encode_query(to_tensor(li.image, size, self.device), sam=support.sam)
                encoded.append((support, query, mask_tensor(li.mask, size, self.device)))
            for j, (_, query, target) in enumerate(encoded):
                others = [sup for i, (sup, _, _) in enumerate(encoded) if i != j][:shots]
                if others:
                    samples.append((SupportFeatures.cat(others), query, target))
        if not samples:
            raise InputError("fine-tuning needs episodes with at least two labelled images (support + query)")
        opts = self.config.options
        total = int(steps if steps is not None else opts.get("finetune_steps", 100))
        rng = np.random.default_rng(int(opts.get("seed", 0)))
        generator = self.model.generator
        optimizer = torch.optim.AdamW(
            [p for p in generator.parameters()], lr=float(opts.get("finetune_lr", 1e-5)), weight_decay=1e-6
        )

        def step_loss(step: int) -> torch.Tensor:
            support, query, target = samples[int(rng.integers(len(samples)))]
            with self.autocast():
                out = self.model.forward_features(query, support)
            logits = out["logits"].float()
            return bce_dice_loss(logits, F.interpolate(target, size=logits.shape[-2:], mode="nearest")[:, 0])

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(opts.get("seed", 0)))
            losses = optimise(generator, optimizer, step_loss, total, progress)
        self._version_tag = "pg-" + state_dict_digest(generator.state_dict())
        return finetune_figures(losses, total, len(samples), t0)

    # -- inference -------------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        """The precision context every stage runs in: bf16 autocast on CUDA (unless fp32), else none."""
        if self.device.type == "cuda" and self.dtype != torch.float32:
            return torch.autocast("cuda", dtype=self.dtype)
        return contextlib.nullcontext()

    @torch.no_grad()
    def encode_example(self, example: LabelledImage) -> SupportFeatures:
        size = self.model.sam.image_size
        image = to_tensor(example.image, size, self.device)
        with self.autocast():
            return self.model.encode_support(image, mask_tensor(example.mask, size, self.device))

    @torch.no_grad()
    def predict(
        self, images: Sequence[np.ndarray], examples: Mapping[str, Sequence[Any]]
    ) -> list[dict[str, SegmentResult]]:
        size = self.model.sam.image_size
        batch = torch.cat([to_tensor(img, size, self.device) for img in images])
        results: list[dict[str, SegmentResult]] = [{} for _ in images]
        with self.autocast():
            query = self.model.encode_query(batch)
            for label, shots in examples.items():
                support = SupportFeatures.cat(list(shots))
                if self.trained:
                    self.predict_trained(images, query, support, label, results)
                else:
                    self.predict_cold_start(images, query, support, label, results)
        return results

    @torch.no_grad()
    def prompt(
        self,
        image: np.ndarray,
        points: Sequence[tuple[float, float, bool]],
        box: tuple[float, float, float, float] | None,
        *,
        examples: Sequence[Any] = (),
        start: np.ndarray | None = None,
        label: str | None = None,
    ) -> SegmentResult | None:
        """SAM's own point / box prompting (the multi-mask output with the best predicted IoU, which
        is the score: SAM's estimate of the returned mask's IoU). The box goes to SAM's prompt
        encoder as a box; ``examples``, ``start`` and ``label`` are not used (SAM answers the prompts)."""
        if not points and box is None:
            return None
        size = self.model.sam.image_size
        height, width = image.shape[:2]
        sx, sy = size / width, size / height  # SAM's input is the image stretched to size x size
        pts = None
        if points:
            coords = torch.tensor([[[x * sx, y * sy] for x, y, _ in points]], dtype=torch.float32, device=self.device)
            labels = torch.tensor([[1 if positive else 0 for *_, positive in points]], device=self.device)
            pts = (coords, labels)
        boxes = None
        if box is not None:
            x0, y0, x1, y1 = box
            boxes = torch.tensor([[x0 * sx, y0 * sy, x1 * sx, y1 * sy]], dtype=torch.float32, device=self.device)
        with self.autocast():
            feats = self.model.sam.encode(to_tensor(image, size, self.device))
            logits, iou_pred = self.model.sam.decode_prompts(feats, points=pts, boxes=boxes, multimask=True)
        best = int(iou_pred[0].float().argmax())
        mask = upsample_mask(logits[0, best : best + 1], height, width)
        return SegmentResult(
            mask, float(iou_pred[0, best].float().clamp(0, 1)) if mask.any() else 0.0, {"prompted": True}
        )

    def predict_trained(
        self,
        images: Sequence[np.ndarray],
        query: QueryFeatures,
        support: SupportFeatures,
        label: str,
        results: list[dict[str, SegmentResult]],
    ) -> None:
        """Decode with the trained prompt generator: ``results[i][label]`` for every image.

        ``query``: ``model.encode_query`` of the B images (B, 3, S, S); ``support``: one label's
        shots, ``SupportFeatures.cat`` of :meth:`encode_example` results (repeated per query here).
        Masks are upsampled to each image's native (H, W). Run under :meth:`autocast` and no_grad.
        """
        out = self.model.forward_features(query, support.repeat(len(images)))
        for i, img in enumerate(images):
            mask = upsample_mask(out["low_res_logits"][i], *img.shape[:2])
            score = float(out["iou"][i, 0].clamp(0, 1)) if mask.any() else 0.0
            results[i][label] = SegmentResult(mask, score)

    def predict_cold_start(
        self,
        images: Sequence[np.ndarray],
        query: QueryFeatures,
        support: SupportFeatures,
        label: str,
        results: list[dict[str, SegmentResult]],
    ) -> None:
        """Decode training-free: SAM prompted with points and a box read off DC-SAM's priors; the
        same inputs and outputs as :meth:`predict_trained`."""
        n = len(images)
        pos, neg = self.model.priors(query, support.repeat(n))
        for i, img in enumerate(images):
            prompts = prompts_from_priors(pos[i, 0].float(), neg[i, 0].float(), self.model.sam.image_size)
            if prompts is None:
                results[i][label] = SegmentResult(np.zeros(img.shape[:2], bool), 0.0, {"reason": "no foreground prior"})
                continue
            coords, labels, box, region = prompts
            feats = query.sam.select(slice(i, i + 1))
            logits, iou_pred = self.model.sam.decode_prompts(
                feats,
                points=(coords[None].to(self.device), labels[None].to(self.device)),
                boxes=box[None].to(self.device),
            )
            # Pick the candidate that agrees best with the prior region, weighted by SAM's own IoU guess.
            grid = (F.interpolate(logits.float(), size=region.shape, mode="bilinear", align_corners=False)[0] > 0).cpu()
            agreement = torch.tensor([iou(g.numpy(), region.numpy()) for g in grid], device=self.device)
            quality = agreement * iou_pred[0].float().clamp(0, 1)
            best = int(quality.argmax())
            mask = upsample_mask(logits[0, best : best + 1], *img.shape[:2])
            results[i][label] = SegmentResult(
                mask, float(quality[best]) if mask.any() else 0.0, {"agreement": float(agreement[best])}
            )


def prompts_from_priors(pos: torch.Tensor, neg: torch.Tensor, frame: int, max_pos: int = 3, max_neg: int = 2):
    """Training-free prompts from the positive / negative priors (g, g) on a grid.

    Foreground where the positive prior beats the negative one; its largest components give a
    box; peaks of the difference give positive points, peaks of the reverse negative points.
    Returns (coords (n, 2) in the ``frame``-pixel input, labels (n,), box (4,), region (g, g))
    or None when no location looks like the example's foreground.
    """
    diff = (pos - neg).cpu()
    region: np.ndarray = (diff > 0).numpy().astype(np.uint8)
    if not region.any():
        return None
    count, comp, stats, _ = cv2.connectedComponentsWithStats(region, connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = [k + 1 for k in range(count - 1) if areas[k] >= 0.1 * areas.max()]  # drop specks
    region = np.isin(comp, keep)
    ys, xs = np.nonzero(region)
    g = diff.shape[-1]
    scale = frame / g
    box = torch.tensor([xs.min() * scale, ys.min() * scale, (xs.max() + 1) * scale, (ys.max() + 1) * scale])
    pos_pts = _peaks(diff * torch.from_numpy(region), max_pos)
    neg_pts = _peaks(-diff * torch.from_numpy(~region), max_neg)
    pts = pos_pts + neg_pts
    coords = torch.tensor([[(x + 0.5) * scale, (y + 0.5) * scale] for y, x in pts], dtype=torch.float32)
    labels = torch.tensor([1] * len(pos_pts) + [0] * len(neg_pts), dtype=torch.int64)
    return coords, labels, box, torch.from_numpy(region)


def _peaks(score: torch.Tensor, k: int, radius: int = 6) -> list[tuple[int, int]]:
    """Up to ``k`` positive local maxima of ``score`` at least ``radius`` cells apart."""
    s = score.clone()
    out = []
    for _ in range(k):
        idx = int(s.argmax())
        y, x = divmod(idx, s.shape[1])
        if s[y, x] <= 0:
            break
        out.append((y, x))
        s[max(0, y - radius) : y + radius + 1, max(0, x - radius) : x + radius + 1] = 0
    return out
