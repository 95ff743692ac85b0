"""The DC-SAM engine: a trained prompt generator drives SAM; without one, a training-free
cold start prompts SAM with points and a box read off DC-SAM's prior masks, and fine-tuning on a
project's annotations learns a residual around those prompts (:class:`dcsam.modeling.ProjectPrompter`)."""

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
from ..modeling import DCSAM, ProjectPrompter, QueryFeatures, SamFeatures, SupportFeatures
from ..modeling.project_prompter import token_types
from ..training.loop import finetune_figures, optimise
from ..training.losses import bce_dice_loss, soft_bce_dice_loss
from ..training.project import augmented_views, cosine_lr, schedule_steps
from .base import Engine, Episode, LabelledImage, ProgressFn, Prompts, SegmentResult

log = logging.getLogger(__name__)

PROMPT_GENERATOR_KIND = "dcsam-prompt-generator"
# Settings a prompt-generator checkpoint must agree with (they change its architecture or inputs).
ARCH_SETTINGS = ("sam", "backbone", "variant")

Results = list[dict[str, SegmentResult]]  # per query image: label -> its result


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
        self.trained = False  # a trained DC-SAM prompt generator drives SAM
        self.prompter: ProjectPrompter | None = None  # else: the cold start, with this residual once fine-tuned
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
        """The trained prompt generator's state; a project prompter's as ``{"project_prompter": ...}``;
        ``{}`` for the cold start."""
        if self.trained:
            return self.model.generator.state_dict()
        if self.prompter is not None:
            return {"project_prompter": self.prompter.state_dict(), "format": 1}
        return {}

    def load_trainable_state_dict(self, state: Mapping[str, Any]) -> None:
        from ..weights import load_strict

        if not state:  # no trained prompt generator: back to the cold start
            self.trained = False
            self.prompter = None
            self._version_tag = "coldstart"
            return
        if "project_prompter" in state:  # the cold start with a project's learnt residual
            prompter = self.new_prompter()
            load_strict(prompter, state["project_prompter"], source="project-prompter weights")
            self.trained = False
            self.prompter = prompter.eval()
            self._version_tag = "pp-" + state_dict_digest(prompter.state_dict())
            return
        load_strict(self.model.generator, state, source="prompt-generator weights")
        self.trained = True
        self.prompter = None
        self._version_tag = "pg-" + state_dict_digest(self.model.generator.state_dict())

    def new_prompter(self, seed: int = 0) -> ProjectPrompter:
        """An untrained project prompter (output layers at zero: the cold start exactly), seeded."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            prompter = ProjectPrompter(int(self.model.sam.positive_embedding.shape[-1]))
        return prompter.to(self.device)

    @property
    def version(self) -> str:
        random = "-random" if self.config.random_sam_weights or self.config.random_backbone_weights else ""
        return f"dcsam-{self.config.sam}-{self.config.backbone}-{self._version_tag}{random}"

    # -- fine-tuning -----------------------------------------------------------------------------
    def finetune(
        self, episodes: Sequence[Episode], *, steps: int | None = None, progress: ProgressFn | None = None
    ) -> dict[str, Any]:
        """Fine-tune on episodes; SAM and the backbone stay frozen.

        On the cold start (or a project prompter fine-tuned before) this trains the project prompter
        (:meth:`finetune_project`). With a trained prompt generator, the generator: every labelled image
        of an episode is a query once, with the episode's other images (at most as many as it has
        supports) as its shots. Each image is encoded once (frozen features).
        Options (``config.options``): ``finetune_steps`` (100), ``finetune_lr`` (1e-5: a small step away
        from the trained weights), ``seed`` (0).
        """
        if not self.trained:
            return self.finetune_project(episodes, steps=steps, progress=progress)
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

    def finetune_step_choices(self) -> list[int | None]:
        # cold start: 0 steps (the cold start itself) against the project prompter's schedule; a trained
        # generator: its default fine-tune
        return [None] if self.trained else [0, None]

    def finetune_project(
        self, episodes: Sequence[Episode], *, steps: int | None = None, progress: ProgressFn | None = None
    ) -> dict[str, Any]:
        """Train the project prompter (a residual around the cold start's prompts) on episodes.

        Each step draws queries: an image of a label with K supports, other images of the same label (K:
        the episodes' support count, as served), each as one of its augmented views
        (:func:`dcsam.training.project.augmented_views`, encoded once). Loss: BCE + Dice on the mask the
        cold start's rule picks among SAM's three. Starts from the engine's prompter if it has one (a
        fine-tuned version), else from an untrained one, which reproduces the cold start exactly.
        Options (``config.options``): ``project_steps`` (default :func:`~dcsam.training.project.schedule_steps`
        of the image count), ``project_lr`` (2e-3, cosine decay), ``project_batch`` (4 queries a step),
        ``project_views`` (4 per image), ``seed`` (0).
        """
        t0 = time.perf_counter()
        opts = self.config.options
        seed = int(opts.get("seed", 0))
        n_views = max(1, int(opts.get("project_views", 4)))
        pools: dict[str, list[LabelledImage]] = {}
        shots = 1
        for ep in episodes:
            pools.setdefault(ep.label, []).extend([*ep.support, *ep.query])
            shots = max(shots, len(ep.support))
        pools = {label: items for label, items in pools.items() if len(items) >= 2}
        if not pools:
            raise InputError("fine-tuning needs episodes with at least two labelled images (support + query)")
        n_images = sum(len(items) for items in pools.values())
        total = int(steps if steps is not None else opts.get("project_steps") or schedule_steps(n_images))
        if total <= 0:  # 0 steps: the weights as they are (the cold start, or the prompter it holds)
            return finetune_figures([], 0, n_images, t0)
        # every view encoded once (the backend's feature cache also keeps them across folds and jobs' runs)
        bank: dict[str, list[list[tuple[QueryFeatures, SupportFeatures, np.ndarray]]]] = {}
        for label, items in sorted(pools.items()):
            bank[label] = [[self.encode_view(v) for v in augmented_views(li, n_views)] for li in items]
        targets: dict[int, torch.Tensor] = {}

        def target(mask: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
            key = id(mask)
            if key not in targets:  # the share of each low-res cell inside the mask
                small = cv2.resize(mask.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
                targets[key] = torch.from_numpy(small).to(self.device)[None, None]
            return targets[key]

        rng = np.random.default_rng(seed)
        labels = sorted(bank)
        batch = max(1, int(opts.get("project_batch", 4)))
        lr = float(opts.get("project_lr", 2e-3))
        prompter = self.prompter if self.prompter is not None else self.new_prompter(seed)
        optimizer = torch.optim.AdamW(prompter.parameters(), lr=lr, weight_decay=1e-4)
        skipped = 0

        def step_loss(step: int) -> torch.Tensor:
            nonlocal skipped
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(lr, step, total)
            losses: list[torch.Tensor] = []
            for _ in range(4 * batch):
                if len(losses) == batch:
                    break
                views = bank[labels[int(rng.integers(len(labels)))]]
                qi = int(rng.integers(len(views)))
                others = [j for j in range(len(views)) if j != qi]
                chosen = rng.choice(others, size=min(shots, len(others)), replace=False)
                query, _, mask = views[qi][int(rng.integers(n_views))]
                support = SupportFeatures.cat([views[int(j)][int(rng.integers(n_views))][1] for j in chosen])
                pos, neg = self.model.priors(query, support)
                with self.autocast():
                    out = self.prompted_logits(query.sam, pos, neg, support, prompter)
                if out is None:  # no foreground prior: the cold start answers an empty mask, nothing to learn
                    skipped += 1
                    continue
                logits, iou_pred, region = out
                best, _, _ = pick_candidate(logits, iou_pred, region)
                z = logits[:, best : best + 1].float()
                losses.append(soft_bce_dice_loss(z, target(mask, tuple(z.shape[-2:]))))
            if not losses:
                return sum((p.sum() * 0.0 for p in prompter.parameters()), torch.zeros((), device=self.device))
            return torch.stack(losses).mean()

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            losses = optimise(prompter, optimizer, step_loss, total, progress)
        self.prompter = prompter.eval()
        self._version_tag = "pp-" + state_dict_digest(prompter.state_dict())
        figures = finetune_figures(losses, total, n_images, t0)
        figures.update(views=n_views, shots=shots, skipped_queries=skipped)
        return figures

    # -- inference -------------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        """The precision context every stage runs in: bf16 autocast on CUDA (unless fp32), else none."""
        if self.device.type == "cuda" and self.dtype != torch.float32:
            return torch.autocast("cuda", dtype=self.dtype)
        return contextlib.nullcontext()

    @torch.no_grad()
    def encode_query(self, image: np.ndarray) -> QueryFeatures:
        """Frozen features of one query image (uint8 (H, W, 3)): backbone and SAM."""
        with self.autocast():
            return self.model.encode_query(to_tensor(image, self.model.sam.image_size, self.device))

    @torch.no_grad()
    def encode_view(self, view: LabelledImage) -> tuple[QueryFeatures, SupportFeatures, np.ndarray]:
        """One labelled image as a query and as a support, SAM run once (:meth:`encode_query`, which the
        backend's feature cache keeps across a training job's runs), and its mask."""
        query = self.encode_query(view.image)
        size = self.model.sam.image_size
        with self.autocast():
            support = self.model.encode_support(
                to_tensor(view.image, size, self.device), mask_tensor(view.mask, size, self.device), sam=query.sam
            )
        return query, support, view.mask

    @torch.no_grad()
    def encode_example(self, example: LabelledImage) -> SupportFeatures:
        size = self.model.sam.image_size
        image = to_tensor(example.image, size, self.device)
        sam = self.encode_query(example.image).sam  # shared with the image as a query (one SAM pass when cached)
        with self.autocast():
            return self.model.encode_support(image, mask_tensor(example.mask, size, self.device), sam=sam)

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
    def prompt(self, image: np.ndarray, prompts: Prompts, start: np.ndarray | None = None) -> SegmentResult | None:
        """SAM's own point / box prompting (the multi-mask output with the best predicted IoU, which
        is the score: SAM's estimate of the returned mask's IoU). The box goes to SAM's prompt
        encoder as a box; the examples, ``start`` and the label are not used (SAM answers the prompts)."""
        points, box = prompts.points, prompts.box
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
        self, images: Sequence[np.ndarray], query: QueryFeatures, support: SupportFeatures, label: str, results: Results
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
        self, images: Sequence[np.ndarray], query: QueryFeatures, support: SupportFeatures, label: str, results: Results
    ) -> None:
        """Decode training-free: SAM prompted with points and a box read off DC-SAM's priors (plus the
        project prompter's residual once fine-tuned, :meth:`prompted_logits`); the same inputs and
        outputs as :meth:`predict_trained`."""
        n = len(images)
        pos, neg = self.model.priors(query, support.repeat(n))
        for i, img in enumerate(images):
            out = self.prompted_logits(
                query.sam.select(slice(i, i + 1)), pos[i : i + 1], neg[i : i + 1], support, self.prompter
            )
            if out is None:
                results[i][label] = SegmentResult(np.zeros(img.shape[:2], bool), 0.0, {"reason": "no foreground prior"})
                continue
            logits, iou_pred, region = out
            best, quality, agreement = pick_candidate(logits, iou_pred, region)
            mask = upsample_mask(logits[0, best : best + 1], *img.shape[:2])
            results[i][label] = SegmentResult(
                mask, float(quality[best]) if mask.any() else 0.0, {"agreement": float(agreement[best])}
            )

    def prompted_logits(
        self,
        feats: SamFeatures,
        pos: torch.Tensor,
        neg: torch.Tensor,
        support: SupportFeatures,
        prompter: ProjectPrompter | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """SAM on one query (``feats`` batch 1, priors (1, 1, g, g)) prompted as the cold start does, with
        ``prompter``'s corrections added to the prompt embeddings when given (none: the cold start).

        ``support``: the label's K shots. Returns SAM's three candidates' low-res logits (1, 3, h, w), their
        predicted IoU (1, 3) and the prior region (g, g) the prompts came from; None without a foreground
        prior. Gradients flow into ``prompter`` unless the caller disables them.
        """
        prompts = prompts_from_priors(pos[0, 0].float(), neg[0, 0].float(), self.model.sam.image_size)
        if prompts is None:
            return None
        coords, labels, box, region = prompts
        labels = labels.to(self.device)
        sam = self.model.sam
        sparse, dense = sam.encode_prompts(
            points=(coords[None].to(self.device), labels[None]), boxes=box[None].to(self.device)
        )
        if prompter is not None:
            dense_delta, token_delta = prompter(feats.embed, support.sam.embed, support.mask, pos, neg)
            types = token_types(labels, boxes=1)
            if sparse.shape[1] != len(types):
                raise AssertionError(f"SAM made {sparse.shape[1]} prompt embeddings for {len(types)} prompts")
            sparse = sparse + token_delta[types].unsqueeze(0).to(sparse.dtype)
            dense = dense + dense_delta.to(dense.dtype)
        logits, iou_pred = sam.decode_embeddings(feats, sparse, dense, multimask=True)
        return logits, iou_pred, region


def pick_candidate(
    logits: torch.Tensor, iou_pred: torch.Tensor, region: torch.Tensor
) -> tuple[int, torch.Tensor, torch.Tensor]:
    """The cold start's choice among SAM's candidates (1, M, h, w): the one that agrees best with the prior
    region (g, g), weighted by SAM's own IoU guess (1, M). Returns (index, quality (M,), agreement (M,))."""
    with torch.no_grad():
        grid = (F.interpolate(logits.float(), size=region.shape, mode="bilinear", align_corners=False)[0] > 0).cpu()
        agreement = torch.tensor([iou(g.numpy(), region.numpy()) for g in grid], device=logits.device)
        quality = agreement * iou_pred[0].float().clamp(0, 1)
    return int(quality.argmax()), quality, agreement


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
