"""SAM 2 memory propagation with a bounded memory bank (our own loop over ``SAM2Base.track_step``).

``SAM2VideoPredictor`` keeps every frame's image, features and outputs for the whole video; this
loop keeps only what ``track_step`` can read again:

* the conditioning frame's output (its memory features and object pointer);
* the memory features of the last ``num_maskmem - 1`` frames (6 for the released models) and the
  object pointers of the last ``max_obj_ptrs_in_encoder - 1`` frames (15); older entries are
  dropped as the loop walks on, so what it holds does not grow with the video's length;
* nothing of the images: each frame is decoded, encoded, tracked and released.

Several labels (objects) run as one batch: the frame is encoded once and its features expanded to
the number of objects, as ``SAM2VideoPredictor`` does. The conditioning frame gets each object's
mask as a mask input (``add_new_mask``: SAM 2 uses the mask as the output, encodes the binarised
mask into memory and derives the object pointer from it), so the mask can come from anywhere: the
DAVIS first-frame mask, or the in-context image engine's prediction on that frame. Outputs match
the upstream predictor's post-processing: holes up to ``fill_hole_area`` low-res pixels are
filled, masks are resized to the frame's size and thresholded at 0.
On CUDA the loop runs under bf16 autocast and stores memory features in bf16, like upstream.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..engines.base import SegmentResult
from ..masks import resize_mask
from ..modeling.sam2_internals import encode_memory, flat_backbone_features, non_overlapping_masks, track_frame
from ..modeling.sam_adapter import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)


def fill_small_holes(logits: torch.Tensor, max_area: int) -> torch.Tensor:
    """Upstream's ``fill_holes_in_mask_scores`` without its CUDA extension (OpenCV instead).

    logits (B, 1, h, w): background components (score <= 0, 8-connected) of at most ``max_area``
    pixels get the small positive score 0.1, i.e. become foreground.
    """
    if max_area <= 0:
        return logits
    out = logits.clone()
    bg = (logits[:, 0] <= 0).cpu().numpy().astype(np.uint8)
    for b in range(bg.shape[0]):
        n, lab, stats, _ = cv2.connectedComponentsWithStats(bg[b], connectivity=8)
        small = [k for k in range(1, n) if stats[k, cv2.CC_STAT_AREA] <= max_area]
        if small:
            sel = torch.from_numpy(np.isin(lab, small)).to(out.device)
            out[b, 0] = torch.where(sel, torch.full_like(out[b, 0], 0.1), out[b, 0])
    return out


class Sam2Propagator:
    """Propagates object masks through a video with a frozen SAM 2 model, memory bounded."""

    name = "sam2"

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        fill_hole_area: int = 8,
    ) -> None:
        from sam2.modeling.sam2_base import SAM2Base

        if not isinstance(model, SAM2Base):
            raise TypeError(f"SAM 2 propagation needs a SAM2Base model, got {type(model).__name__}")
        self.model = model.eval()
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.dtype = dtype
        self.fill_hole_area = int(fill_hole_area)
        self.size = int(model.image_size)
        stride = max(1, int(getattr(model, "memory_temporal_stride_for_eval", 1)))
        # After tracking frame i, the next frame reads memory features of frames up to
        # (num_maskmem - 2) * stride before i (5 for the released models: i-5 .. i) and object
        # pointers of frames up to max_obj_ptrs_in_encoder - 2 before i (i-14 .. i).
        self.mem_span = max(1, (model.num_maskmem - 2) * stride + 1) if model.num_maskmem > 1 else 0
        self.ptr_span = max(0, int(model.max_obj_ptrs_in_encoder) - 1) if model.use_obj_ptrs_in_encoder else 0
        self.labels: list[str] = []
        self.cond: dict[int, dict] = {}
        self.non_cond: OrderedDict[int, dict] = OrderedDict()
        self.num_frames = 1 << 30
        self._pos_enc: list[torch.Tensor] | None = None
        self._anchor = 0

    # -- stages (also used by the benchmark to feed upstream's predictor the same way) -----------
    def autocast(self) -> contextlib.AbstractContextManager:
        """The precision context the loop runs in: bf16 autocast on CUDA (unless fp32), else none."""
        if self.device.type == "cuda" and self.dtype != torch.float32:
            return torch.autocast("cuda", dtype=self.dtype)
        return contextlib.nullcontext()

    @property
    def _storage_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.device.type == "cuda" and self.dtype != torch.float32 else torch.float32

    def image_tensor(self, frame: np.ndarray) -> torch.Tensor:
        """uint8 (H, W, 3) frame -> SAM 2's normalised input (1, 3, S, S) on the device, S the
        model's image size; resized on the CPU (no full-size tensor on the device)."""
        s = self.size
        h, w = frame.shape[:2]
        interp = cv2.INTER_AREA if h * w > s * s else cv2.INTER_LINEAR
        img = cv2.resize(frame, (s, s), interpolation=interp)
        x = torch.from_numpy(img).to(self.device).permute(2, 0, 1)[None].float().div_(255.0)
        mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return (x - mean) / std

    def _encode(self, frame: np.ndarray, batch: int):
        m = self.model
        out = m.forward_image(self.image_tensor(frame))
        expanded = {
            "backbone_fpn": [f.expand(batch, -1, -1, -1) for f in out["backbone_fpn"]],
            "vision_pos_enc": [p.expand(batch, -1, -1, -1) for p in out["vision_pos_enc"]],
        }
        return flat_backbone_features(m, expanded)

    def _compact(self, out: dict) -> dict:
        feats = out.get("maskmem_features")
        if self._pos_enc is None and out.get("maskmem_pos_enc") is not None:
            self._pos_enc = [p[0:1].clone() for p in out["maskmem_pos_enc"]]
        b = out["obj_ptr"].shape[0]
        return {
            "maskmem_features": None if feats is None else feats.to(self._storage_dtype),
            "maskmem_pos_enc": None if self._pos_enc is None else [p.expand(b, -1, -1, -1) for p in self._pos_enc],
            "obj_ptr": out["obj_ptr"],
            "object_score_logits": out["object_score_logits"],
        }

    def _trim(self, index: int) -> None:
        """Drop what track_step can no longer read (relative to the frame just tracked)."""
        for t in list(self.non_cond):
            dist = abs(index - t)
            if dist >= max(self.mem_span, self.ptr_span, 1):
                del self.non_cond[t]
            elif dist >= self.mem_span and self.non_cond[t]["maskmem_features"] is not None:
                self.non_cond[t] = {**self.non_cond[t], "maskmem_features": None}

    def memory_size(self) -> dict[str, int]:
        """Frames held: conditioning, with memory features, with only an object pointer."""
        with_feats = sum(1 for o in self.non_cond.values() if o["maskmem_features"] is not None)
        return {"cond": len(self.cond), "memory_frames": with_feats, "pointer_only": len(self.non_cond) - with_feats}

    def _results(self, logits: torch.Tensor, scores: torch.Tensor, shape: tuple[int, int]) -> dict[str, SegmentResult]:
        logits = fill_small_holes(logits.float(), self.fill_hole_area)
        up = (F.interpolate(logits, size=shape, mode="bilinear", align_corners=False)[:, 0] > 0).cpu().numpy()
        sc = torch.sigmoid(scores.float().view(-1)).cpu().numpy()
        return {lab: SegmentResult(up[i], float(sc[i]) if up[i].any() else 0.0) for i, lab in enumerate(self.labels)}

    # -- tracking --------------------------------------------------------------------------------
    @torch.inference_mode()
    def start(
        self, frame: np.ndarray, masks: Mapping[str, np.ndarray | None], index: int = 0, num_frames: int | None = None
    ) -> dict[str, SegmentResult]:
        """Condition on ``frame`` (video index ``index``) with one mask per label (None: empty)."""
        m = self.model
        self.labels = list(masks)
        if not self.labels:
            raise ValueError("no labels to track")
        self.num_frames = int(num_frames) if num_frames else 1 << 30
        b = len(self.labels)
        h, w = frame.shape[:2]
        full = torch.zeros(b, 1, h, w)
        for i, lab in enumerate(self.labels):
            mk = masks[lab]
            if mk is not None:
                mk = resize_mask(mk, h, w)
                full[i, 0] = torch.from_numpy(mk)
        mask_inputs = full.to(self.device)
        if (h, w) != (self.size, self.size):  # as add_new_mask: antialiased resize, then >= 0.5
            mask_inputs = (
                F.interpolate(
                    mask_inputs, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True
                )
                >= 0.5
            ).float()
        self._pos_enc = None
        self.cond, self.non_cond = {}, OrderedDict()
        with self.autocast():
            feats, pos, sizes = self._encode(frame, b)
            out = track_frame(
                m, index, (feats, pos, sizes), ({}, {}), self.num_frames, mask_inputs=mask_inputs, run_mem_encoder=False
            )
            # memory as propagate_in_video_preflight encodes it: the low-res mask, upsampled and
            # binarised (a prompted frame, binarize_mask_from_pts_for_mem_enc=True in video mode)
            high = F.interpolate(
                out["pred_masks"].float(), size=(self.size, self.size), mode="bilinear", align_corners=False
            )
            mask_probs = (high > 0).float()
            if m.non_overlap_masks_for_mem_enc:
                mask_probs = non_overlapping_masks(m, mask_probs)
            mem, mem_pos = encode_memory(m, feats, sizes, mask_probs, out["object_score_logits"])
        out["maskmem_features"], out["maskmem_pos_enc"] = mem, mem_pos
        self.cond[index] = self._compact(out)
        self._anchor = index
        results = {}
        for i, lab in enumerate(self.labels):
            mk = full[i, 0].numpy() > 0
            results[lab] = SegmentResult(mk, 1.0 if mk.any() else 0.0, {"given": True})
        return results

    def rewind(self) -> None:
        """Back to the conditioning frame only (before propagating in the other direction)."""
        self.non_cond = OrderedDict()

    @torch.inference_mode()
    def step(self, frame: np.ndarray, index: int, reverse: bool = False) -> dict[str, SegmentResult]:
        """Track every label into ``frame`` (video index ``index``) from the memory bank."""
        if not self.cond:
            raise RuntimeError("start() first")
        b = len(self.labels)
        with self.autocast():
            out = track_frame(
                self.model, index, self._encode(frame, b), (self.cond, self.non_cond), self.num_frames, reverse=reverse
            )
        self.non_cond[index] = self._compact(out)
        self._trim(index)
        return self._results(out["pred_masks"], out["object_score_logits"], frame.shape[:2])


def sam2_model_of(engine: Any) -> torch.nn.Module | None:
    """The SAM 2 model inside a DC-SAM engine (None for the lite engine or SAM 1)."""
    model = getattr(engine, "model", None)
    sam = getattr(model, "sam", None)
    if sam is not None and getattr(sam, "family", None) == "sam2":
        return sam.model
    return None
