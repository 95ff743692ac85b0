"""Video propagation with the SAM-free lite engine: per-frame matching plus temporal smoothing.

0. Frames are seen at their own working size (``size``, default 768: the long side at which they
   are encoded, matched and refined; the engine's ``size``, 512, serves training and a trained head,
   and an untrained engine's examples are matched at their own detail side, 768 too). At
   512 a stride-8 cell of an 854x480 DAVIS frame is 13 pixels across, so a limb, a small dog or a
   kite-surfer is a cell or two wide: most of its cells are part background, the matching gives
   them to the background, and the masks come out too small (frame 1 of kite-surf: 1.5 % of the
   frame against 2.4 %, IoU 0.57 on a frame that barely moved). On all 10 davis16-dev videos
   (DAVIS protocol) mean J&F: 512 0.704 (easy 0.926, hard 0.556), 640 0.730 (0.924, 0.601), 768
   0.749 (0.928, 0.629): every hard video better (bmx-trees 0.558 -> 0.626, breakdance 0.522 ->
   0.596, horsejump-high 0.764 -> 0.826, kite-surf 0.428 -> 0.506, libby 0.696 -> 0.824,
   paragliding-launch 0.367 -> 0.403: none below 0.40), the easy ones within 0.02 (blackswan 0.940
   -> 0.960, car-roundabout 0.946 -> 0.935, car-shadow 0.920 -> 0.912, dog 0.898 -> 0.905). The
   matching grows with the square of the cells, so frames run the backbone in bfloat16 and pick
   their k-NN rows in bfloat16 where the CPU has bfloat16 instructions (values rescored in float32;
   J&F unchanged at three decimals): 0.45-0.49 s per frame on 2 idle cores (0.29 at 640) then;
   0.27-0.33 s since the backbone runs channels-last, with the engine's mirrored features.
0b. Optional, before the first frame: ``views`` randomly transformed copies of the conditioning frame
   and its given mask (scale +-25 % about the object, shift +-10 %, rotation +-10 degrees, mirror,
   brightness; :mod:`dcsam.video.lite_online`) join the label's examples for matching (not its
   colour model: their colours are made up), with at most ``memory_bg`` background rows each (the
   conditioning frame has the scene already): the object at sizes and places the one frame does not
   show. At size 640: mean J&F 0.730 -> 0.747 (hard 0.601 -> 0.632, breakdance 0.554 -> 0.613,
   kite-surf 0.458 -> 0.531) but dog 0.892 -> 0.881; with every background row of the views 0.742
   (hard 0.612, easy 0.936) at 0.7 s per frame. Off by default: at 768 the size alone does as well
   (0.749) and the views would take a frame past 0.5 s. ``colour`` sets the colour model's weight
   on video frames (auto: the engine's); at size 512, ``views=4 colour=0.5`` lifted the hard videos
   (0.556 -> 0.620) and cost the easy ones (0.926 -> 0.910).
   ``online`` also fine-tunes the head on them (OSVOS-style), on a twin of the engine, so the
   served engine's weights never change. Off: on davis16-dev (size 512, 60 steps, 4 views, first 4
   videos before it was stopped) bmx-trees 0.558 -> 0.455, breakdance 0.522 -> 0.520, blackswan
   0.940 -> 0.956, car-roundabout 0.946 -> 0.942; the same twin with 0 steps bmx-trees 0.594, so
   the head trained on one frame's views is what loses it (over-fitting, likely).

For every frame and label (features computed once per frame, shared by every label):

1. Matching logit (the lite engine's k-NN fore/background priors, plus its fine-tuned head when it
   has one) against the in-context examples and the conditioning frame (given or predicted mask).
2. Memory: every ``memory_every``-th confidently predicted frame joins a deque of at most
   ``memory_frames`` frames ("propagated previous frames as extra examples"), with only its cells
   surely inside / outside the predicted mask; the logit is the mean (``memory_weight``) of the
   matching with and without them. Measured on the 4 easy videos davis16-dev held then
   (blackswan, car-roundabout, car-shadow, dog): the conditioning frame alone 0.907 J&F; every
   frame as memory, all cells, as plain extra examples 0.745 (near-duplicate frames out-vote the
   true example and copy their own errors forward); 2 sparse frames, sure cells, mixed half and
   half 0.925 (the default). On all 10 videos (size 512): no memory 0.699, a memory frame every 2nd
   frame and 4 of them 0.685, the default 0.704. Leaving out the memory's background near the
   predicted mask (where a prediction's misses lie; at size 640) lifted the hard videos 0.601 ->
   0.616 and sank the easy ones 0.924 -> 0.827 (shadows next to the car joined it): not kept.
   The memory frames are matched as one bank beside the examples' and the conditioning frame's,
   whose matches of the frame the matching without the memory has computed already: 0.07 s of a
   dog frame instead of 0.14 s (all ten 0.793 -> 0.792, breakdance 0.744 -> 0.729: each bank
   picks its nearest rows in bfloat16 before they are rescored, so the picks change slightly).
2b. Space-time memory readout (:mod:`dcsam.video.lite_memory`, off unless ``readout_weight`` > 0):
   each grid cell reads the soft labels (mask fractions) of its ``readout_topk`` most similar
   cells in the anchor (the conditioning frame, read everywhere) and in the previous frame plus
   ``readout_long`` sparse confident frames (read only within ``readout_radius`` cells: between
   nearby frames an object moves little, so a growing or moving object keeps its label and a
   look-alike elsewhere cannot take it). ``readout_weight`` x logit(readout) is added to the
   matching logit. While the object is lost only the anchor is read (re-detection).
2c. Cycle-consistent cut (:mod:`dcsam.video.lite_cycle`, ``cycle``, on): the logit's threshold
   suits the conditioning frame; where the object takes a pose or crosses a background that frame
   does not show, its cells score a little below it and the mask shrinks. Each candidate bias
   (-1 to +2 in steps of 0.5) cuts this frame; the conditioning frame is predicted back from that
   labelling (k-NN in reverse) and scored against its given mask; the best reconstruction, less
   ``cycle_penalty`` per unit of bias, sets the frame's bias, and a bias may at most
   ``cycle_growth``-fold the mask. Only a mask a person gave judges (a predicted first frame would
   calibrate every frame to its own errors: across videos 0.684 -> 0.617 when it did). On all 10
   davis16-dev videos: 0.750 -> 0.772 (hard 0.632 -> 0.659, easy 0.928 -> 0.942; breakdance 0.600
   -> 0.744, car-shadow +0.027, dog +0.027, kite-surf +0.028; bmx-trees -0.004, libby -0.010), for
   about 0.05 s a frame. Without the growth limit and the penalty bmx-trees fell to 0.545: hidden
   behind the trees, its rider explains the conditioning frame poorly under every cut, and the
   largest cut, trees included, won.
3. Temporal prior: the previous frame's mask, warped onto this frame with dense optical flow
   (OpenCV DIS), as a signed-distance trimap: ``+prior_weight`` deep inside, ``-prior_weight``
   well outside, neutral within a band around its edge (so thin parts missed once are not locked
   out); and ``-gate_penalty`` beyond a gate radius (``gate_radius`` x the object's size), meant
   to suppress a look-alike far from the tracked object. Off by default (both weights 0, and no
   flow is computed then): on all 10 davis16-dev videos mean J&F 0.650 with them (prior 3, gate
   6) and 0.704 without (6 hard videos 0.466 -> 0.556, 4 easy ones 0.925 -> 0.926, no video
   worse by more than 0.001). The prior pushes inward at the object's edge on every frame, so an
   object that moves faster than the flow follows, or grows, is cut a little each frame until it
   is lost (libby 0.366 -> 0.696, bmx-trees 0.458 -> 0.558, breakdance 0.446 -> 0.522). Across
   videos (example: frame 0 of another video; dog <-> libby, car-roundabout <-> car-shadow) mean
   J&F 0.468 -> 0.500 (dog -> libby 0.103 -> 0.221; the car pairs unchanged).
3b. Zoom (:mod:`dcsam.video.lite_zoom`, ``zoom``, on): once an object is clearly smaller than in
   its conditioning frame (at least 1.25 times, linearly), a window around its mask is encoded
   again, enlarged by that ratio (at most 3, and at most half the frame's pixels), matched against
   the same banks with the frame's cut and decoded there; its mask replaces the frame's within the
   window (and is what the memory learns from). The matching's features are not scale invariant
   and a shrunken object's cells are mostly background, so it was found less and less well as it
   moved away. On all 10 davis16-dev videos 0.783 -> 0.793: libby 0.823 -> 0.850, car-shadow
   0.939 -> 0.960, bmx-trees 0.622 -> 0.670, horsejump-high 0.828 -> 0.836, the others within
   0.003 (it is never on for most of their frames). It costs a second, smaller pass where it is
   on (libby 0.40 -> 0.48 s a frame on average, before the memory became one bank).
4. The lite engine's refinement (guided filter at full resolution, connected components).
4b. Thin parts (:mod:`dcsam.video.lite_thin`, ``thin``, on): when the labelled frame's mask has
   parts narrower than about two cells that line evidence finds again (a paraglider's or a
   kite-surfer's lines), each frame's pixels with that evidence that connect to its mask join it.
   They are added to the answer only: the memory and the next frame's state follow the matching's
   cells. On all 10 davis16-dev videos (DAVIS protocol) 0.772 -> 0.783: it is on for kite-surf
   (0.534 -> 0.615, F 0.425 -> 0.663), paragliding-launch (0.405 -> 0.429) and bmx-trees (0.621
   -> 0.622) and off for the other seven (their labelled frames gain less than ``MIN_GAIN``), for
   about 0.02 s a frame where it is on.
4c. Colour boundary (:mod:`dcsam.lite.boundary`, ``boundary``, on): the answer's mask, thin parts
   included, grows to where the frame's own colours change: within half a cell beyond its edge
   (and on its outermost pixel) a pixel is object when its colour is clearly likelier inside the
   mask than in a ring around it, and connects to it. Answer only, like the thin parts: fed back
   into the memory and the next frame's state it scored 0.793 instead of 0.798 (kite-surf 0.621,
   car-shadow 0.948). On all 10 davis16-dev videos 0.792 -> 0.798: kite-surf 0.612 -> 0.641 (its
   thin parts' lines, drawn a little wide, are trimmed to their colour: run before them it scored
   0.619), horsejump-high 0.836 -> 0.848 (legs), bmx-trees 0.670 -> 0.679, the others within
   0.006 (car-shadow 0.960 -> 0.957). Not once the engine is fine-tuned: its decision weighs the
   colour model already (``colour_finetuned``), and after fine-tuning on car-shadow's frames 0-8
   the boundary cost frames 10-38 0.016 IoU (0.937 -> 0.921: the shadow's edge joined the car).

A label whose conditioning mask is empty falls back to per-frame in-context prediction from its
examples (no temporal prior) until it first appears; then it is tracked.

State is bounded: the previous frame (working size, grey), each label's previous mask (working
size), its memory deque and its readout memory (anchor, previous, ``readout_long`` frames);
nothing grows with the video's length (``state_nbytes``; tested over 1,000 frames).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..config import coerce_options
from ..engines.base import LabelledImage, SegmentResult
from ..engines.lite import LiteEngine, LiteExample
from ..lite import postprocess
from ..lite.boundary import snap_to_colour
from ..lite.matching import MatchBank, mask_fraction
from ..masks import resize_mask
from .lite_cycle import CycleAnchor, cycle_bias
from .lite_memory import MemoryFrame, SpaceTimeMemory
from .lite_online import augmented_views, online_engine
from .lite_thin import ThinParts
from .lite_zoom import zoom_window

log = logging.getLogger(__name__)

LITE_VIDEO_DEFAULTS: dict[str, Any] = {
    "memory_frames": 2,  # last N memory frames whose features join the matching bank (0: off)
    "memory_every": 5,  # a predicted frame joins the memory every k frames
    "memory_weight": 0.5,  # logit = (1 - w) x logit(examples + conditioning frame) + w x logit(... + memory)
    "memory_bg": 1500,  # background features kept per memory frame
    "memory_min_score": 0.6,  # a frame predicted less surely than this does not join the memory
    "flow": True,  # warp the previous mask with optical flow (else: use it as is)
    "flow_preset": "fast",  # DIS preset: ultrafast | fast | medium
    "prior_weight": 0.0,  # logit weight of the warped previous mask (away from its edge); 0: off (see 3.)
    "band": 0.08,  # neutral band around the warped edge, as a share of sqrt(object area) ...
    "band_min": 4,  # ... but at least this many working-size pixels
    "gate_radius": 0.35,  # gate radius as a share of sqrt(object area) ...
    "gate_min": 16,  # ... but at least this many working-size pixels
    "gate_penalty": 0.0,  # logit subtracted outside the gate; 0: off (see 3.)
    "components": "auto",  # auto = the engine's choice; or none | largest | weighted | confident
    "match_weight": 1.0,  # weight of the k-NN matching logit (examples + conditioning frame)
    "readout_weight": 0.0,  # weight of the space-time memory readout's logit (0: off)
    "readout_radius": 12,  # local window of the recent frames, in grid cells (stride 8 of the working size)
    "readout_topk": 20,  # memory cells each query cell reads
    "readout_temperature": 0.05,  # softmax temperature over their cosine similarities
    "readout_long": 2,  # sparse older frames kept (every memory_every-th confident frame) besides the previous
    "views": 0,  # augmented copies of the conditioning frame that join its label's examples (see 0.)
    "colour": "auto",  # weight of the colour model on video frames; auto: the engine's (see 0.)
    "online": False,  # fine-tune a twin of the engine on the conditioning frame and its views (see 0.)
    "online_steps": 60,  # its head's training steps
    "cycle": True,  # pick each frame's threshold by predicting the conditioning frame back (see 2c.)
    "cycle_penalty": 0.02,  # reconstruction IoU a unit of bias must win
    "cycle_growth": 2.0,  # a lowered threshold may at most grow the mask this many times
    "zoom": True,  # match an object again in an enlarged window once it is clearly smaller than labelled (see 3b.)
    "boundary": True,  # grow each frame's mask to where the frame's own colours change (untrained engine, see 4c.)
    "thin": True,  # recover lines and ropes thinner than a cell per pixel when the labelled frame has them (see 4b.)
    "size": 768,  # working long side of the frames (see 0.); auto: the engine's ``size`` (images')
}


def _flow_preset(name: str) -> int:
    presets = {
        "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
        "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
        "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
    }
    if name not in presets:
        raise ValueError(f"flow_preset {name!r}; choose one of {sorted(presets)}")
    return presets[name]


def normalise_video_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    opts = {**LITE_VIDEO_DEFAULTS, **dict(options or {})}
    unknown = sorted(set(opts) - set(LITE_VIDEO_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown lite video option(s) {unknown}; known: {sorted(LITE_VIDEO_DEFAULTS)}")
    # size: a number or "auto", checked below
    opts = coerce_options(opts, {k: v for k, v in LITE_VIDEO_DEFAULTS.items() if k != "size"})
    _flow_preset(str(opts["flow_preset"]))
    for key, least in (("colour", 0.0), ("size", 64.0)):
        if str(opts[key]) == "auto":
            continue
        try:
            ok = float(opts[key]) >= least
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"lite video option {key}={opts[key]!r}: auto or a number >= {least:g}")
    return opts


@dataclass
class _Track:
    """What is remembered about one label between frames."""

    examples: list[MatchBank]  # the in-context examples' banks (may be none in the DAVIS protocol)
    cond: LiteExample | None = None  # the conditioning frame (given / first predicted mask)
    memory: deque = field(default_factory=deque)  # MatchBank of recent predicted frames
    memory_bank: MatchBank | None = None  # the same as one bank (see banks)
    prev_prob: np.ndarray | None = None  # previous mask at working size, float32 [0, 1]
    colour: Any = None
    stm: SpaceTimeMemory | None = None  # anchor + recent frames with their masks as soft labels
    judge: CycleAnchor | None = None  # the conditioning frame, judging each frame's cut (see 2c.)
    thin: ThinParts | None = None  # the labelled frame's thin parts, recovered on each frame (see 4b.)
    cond_fraction: float = 0.0  # the conditioning mask's share of its frame (the object's size there, see 3b.)

    def banks(self, with_memory: bool = False) -> list[MatchBank]:
        """What a frame is matched against, bank by bank: each bank remembers its matches of a frame,
        so the matching with the memory frames reuses those without them (see 2.). The memory
        frames are one bank: each bank's matching has a fixed cost that small banks do not repay."""
        banks = list(self.examples)
        if self.cond is not None:
            banks.append(self.cond.bank)
        if with_memory and self.memory_bank is not None:
            banks.append(self.memory_bank)
        return banks

    def remember(self, bank: MatchBank, frames: int) -> None:
        """Add a frame's bank to the memory, which keeps the last ``frames``."""
        self.memory.append(bank)
        while len(self.memory) > frames:
            self.memory.popleft()
        self.memory_bank = MatchBank.concat(list(self.memory))

    def forget(self) -> None:
        self.memory.clear()
        self.memory_bank = None


class LitePropagator:
    """Segments video frames one after another for several labels at once with a LiteEngine."""

    name = "lite"

    def __init__(self, engine: LiteEngine, options: Mapping[str, Any] | None = None) -> None:
        if not isinstance(engine, LiteEngine):
            raise TypeError("LitePropagator needs the lite engine")
        self.served = engine  # never trained here: an online fine-tune works on a twin (see start)
        self.engine = engine
        self.opts = normalise_video_options(options)
        colour = str(self.opts["colour"])
        self._colour_weight = None if colour == "auto" else float(colour)  # None: the engine's choice
        size = str(self.opts["size"])
        self._size = None if size == "auto" else int(float(size))  # None: the engine's
        self._long_side: int | None = None  # this video's (see start)
        self._dis = cv2.DISOpticalFlow.create(_flow_preset(str(self.opts["flow_preset"])))
        self.tracks: dict[str, _Track] = {}
        self._prev_grey: np.ndarray | None = None
        self._anchor_state: tuple | None = None
        self._frames_since_memory = 0

    # -- state ---------------------------------------------------------------------------------
    def memory_size(self) -> dict[str, int]:
        """How many frames each label's bank holds (conditioning frame + recent frames)."""
        return {
            lab: int(t.cond is not None) + len(t.memory) + (t.stm.frames() - 1 if t.stm is not None else 0)
            for lab, t in self.tracks.items()
        }

    def state_nbytes(self) -> int:
        """Bytes of the arrays and tensors held between frames (what must not grow with the video)."""

        def size(x: Any) -> int:
            if isinstance(x, torch.Tensor):
                return x.numel() * x.element_size()
            if isinstance(x, np.ndarray):
                return int(x.nbytes)
            if isinstance(x, MatchBank):
                return size(x.fg) + size(x.bg)
            if isinstance(x, MemoryFrame):
                return size(x.keys) + size(x.values)
            return 0

        total = size(self._prev_grey)
        if self._anchor_state is not None:
            total += size(self._anchor_state[0]) + sum(size(p) for p in self._anchor_state[1].values())
        for t in self.tracks.values():
            total += size(t.prev_prob) + sum(size(m) for m in t.memory)
            total += size(t.memory_bank) if len(t.memory) > 1 else 0  # one frame: the same bank
            total += sum(size(b) for b in t.examples) + (size(t.cond.bank) if t.cond is not None else 0)
            if t.stm is not None:
                total += sum(size(f) for f in [t.stm.anchor, *t.stm.recent()] if f is not None)
            total += t.judge.nbytes() if t.judge is not None else 0
        return total

    def _new_memory(self, q, mask: np.ndarray) -> SpaceTimeMemory | None:
        """The label's space-time memory anchored at this frame's mask (None when the readout is off)."""
        o = self.opts
        if o["readout_weight"] <= 0:
            return None
        stm = SpaceTimeMemory(
            radius=int(o["readout_radius"]),
            topk=int(o["readout_topk"]),
            temperature=float(o["readout_temperature"]),
            long_frames=int(o["readout_long"]),
        )
        stm.set_anchor(self._memory_frame(q, mask))
        return stm

    def _new_judge(self, q, mask: np.ndarray) -> CycleAnchor | None:
        """The conditioning frame as the judge of each frame's cut (None when ``cycle`` is off)."""
        if not self.opts["cycle"]:
            return None
        return CycleAnchor.from_grid(q.feats[q.base], mask_fraction(mask, q.grid))

    def _new_thin_parts(self, frame: np.ndarray, mask: np.ndarray) -> ThinParts | None:
        """The labelled frame's thin parts (None when ``thin`` is off or it has none to recover), found
        at half the frame's own long side (a line a pixel or two wide survives the halving), at most
        the working side (a larger frame would cost more than it shows)."""
        if not self.opts["thin"]:
            return None
        side = min(max(frame.shape[:2]) // 2, self._long_side or int(self.engine.opts["size"]))
        return ThinParts.fit(frame, mask, max(side, 64))

    @staticmethod
    def _memory_frame(q, mask: np.ndarray) -> MemoryFrame:
        feats = q.feats[q.base]
        frac = torch.from_numpy(mask_fraction(mask, q.grid)).to(feats.device)
        return MemoryFrame.from_grid(feats, frac)

    def _view_bank(self, view: LabelledImage) -> MatchBank:
        """An augmented view's features for matching: at most ``memory_bg`` background rows (the
        conditioning frame has the scene already). The label's colour model does not take it: its
        colours are made up (brightness), so that model learns from real pixels alone."""
        side = self._long_side if self._long_side is not None else int(self.engine.opts["size"])
        e = self.engine.encode_example(view, long_side=side, low_precision=True)
        return e.bank.subsample_bg(int(self.opts["memory_bg"]))

    def working_side(self, shape: tuple[int, int]) -> int | None:
        """The frames' working long side: ``size``, but no more than their own long side (more pixels
        would add no detail) unless that is below the engine's size (small frames are enlarged as
        images are). None: the engine's."""
        return None if self._size is None else self.served.working_side(shape, self._size)

    def _components(self, label: str) -> str:
        mode = str(self.opts["components"])
        # the served engine's choice: an online twin learns "one object" from views of one frame, which
        # says nothing of occlusions splitting it later (keeping one part would drop the others)
        return self.served.components_mode(label) if mode == "auto" else mode

    def start(
        self,
        frame: np.ndarray,
        masks: Mapping[str, np.ndarray | None],
        examples: Mapping[str, list[Any]] | None = None,
        predicted: Collection[str] = (),
    ) -> dict[str, SegmentResult]:
        """Begin at the conditioning frame with a mask per label (None/empty: not visible yet).

        ``examples``: in-context examples per label (encoded by the lite engine), kept in the bank.
        ``predicted``: labels whose masks here were predicted, not given by a person (they do not
        judge the frames' cuts, see 2c.). Returns the conditioning frame's results (the masks).
        """
        given = {lab: np.asarray(m, bool) for lab, m in masks.items() if m is not None and np.any(m)}
        rng = np.random.default_rng(0)  # the same views every time: results repeat
        views = {lab: augmented_views(frame, m, int(self.opts["views"]), rng) for lab, m in given.items()}
        self.engine = self.served
        if self.opts["online"] and any(views.values()):
            self.engine = online_engine(self.served, frame, given, views, steps=int(self.opts["online_steps"]))
            views = {}  # the fine-tune put them in the twin's matching memory
        eng = self.engine
        examples = dict(examples or {})
        self.tracks = {}
        self._long_side = self.working_side(frame.shape[:2])
        q = eng.encode_query(frame, long_side=self._long_side, low_precision=True)
        wh, ww = q.work_image.shape[:2]
        out = {}
        for label, mask in masks.items():
            exs = [eng.check_example(e) for e in examples.get(label, [])] + eng.memory.get(label, [])
            # an untrained engine matches examples at their detail side, near the frames' own
            banks = [eng.example_bank(e) for e in exs] + [self._view_bank(v) for v in views.get(label, [])]
            track = _Track(examples=banks)
            if mask is not None and np.any(mask):
                mask = np.asarray(mask, bool)
                track.cond = self._encode_predicted(q, mask, frame)
                track.cond_fraction = float(mask.mean())
                track.prev_prob = self._work_prob(mask, (wh, ww))
                track.stm = self._new_memory(q, mask)
                if label not in predicted:  # only a person's mask judges cuts and shows thin parts
                    track.judge = self._new_judge(q, mask)
                    track.thin = self._new_thin_parts(frame, mask)
            colours = [e.colour for e in exs] + ([track.cond.colour] if track.cond is not None else [])
            track.colour = colours[0].merged(colours[1:]) if colours else None
            self.tracks[label] = track
            m = np.zeros(frame.shape[:2], bool) if mask is None else np.asarray(mask, bool)
            out[label] = SegmentResult(m, 1.0 if m.any() else 0.0, {"given": True})
        self._prev_grey = cv2.cvtColor(q.work_image, cv2.COLOR_RGB2GRAY)
        self._anchor_state = (self._prev_grey, {lab: t.prev_prob for lab, t in self.tracks.items()})
        self._frames_since_memory = 0
        return out

    def rewind(self) -> None:
        """Go back to the conditioning frame (to propagate in the other direction)."""
        if self._anchor_state is None:
            raise RuntimeError("start() first")
        grey, probs = self._anchor_state
        self._prev_grey = grey
        for lab, t in self.tracks.items():
            t.forget()
            t.prev_prob = probs[lab]
            if t.stm is not None:
                t.stm.clear_recent()
        self._frames_since_memory = 0

    # -- per frame -------------------------------------------------------------------------------
    def _encode_predicted(self, q, mask: np.ndarray, frame: np.ndarray) -> LiteExample:
        """A conditioning example from a frame whose features are already computed."""
        frac = mask_fraction(mask, q.grid)
        bank = MatchBank.from_example(q.feats[q.base], frac)
        small = resize_mask(mask, *q.work_image.shape[:2])
        colour = postprocess.ColourModel().add(q.work_image, small)
        return LiteExample(bank=bank, colour=colour, signature=self.engine.signature(self._long_side))

    @staticmethod
    def _work_prob(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        return cv2.resize(mask.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_AREA)

    def _warp(self, grey: np.ndarray, probs: list[np.ndarray]) -> list[np.ndarray]:
        """Warp the previous frame's maps onto this frame (backward flow: this -> previous)."""
        prev = self._prev_grey
        if prev is None or not self.opts["flow"]:
            return probs
        if prev.shape != grey.shape:
            prev = cv2.resize(prev, (grey.shape[1], grey.shape[0]), interpolation=cv2.INTER_AREA)
        flow = self._dis.calc(grey, prev, None)  # type: ignore[call-overload]  # OpenCV allocates the flow when given None; its stubs lack that
        h, w = grey.shape
        gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        mx, my = gx + flow[..., 0], gy + flow[..., 1]
        out = []
        for p in probs:
            if p.shape != grey.shape:
                p = cv2.resize(p, (w, h), interpolation=cv2.INTER_LINEAR)
            out.append(
                cv2.remap(p, mx, my, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            )
        return out

    def _temporal_logit(self, prior: np.ndarray) -> np.ndarray:
        """Logit from the warped previous mask: a signed-distance trimap, neutral near its edge.

        Inside the mask, farther than ``band`` from its edge: up to ``+prior_weight``; outside,
        likewise down to ``-prior_weight``; within the band the matching alone decides (thin parts
        missed once are not locked out). Beyond the gate radius: ``-gate_penalty`` more.
        """
        o = self.opts
        fg = prior >= 0.5
        if not fg.any():
            return np.zeros_like(prior, dtype=np.float32)
        size = float(np.sqrt(fg.sum()))
        band = max(float(o["band_min"]), o["band"] * size)
        inside = cv2.distanceTransform(fg.astype(np.uint8), cv2.DIST_L2, 5)
        outside = cv2.distanceTransform((~fg).astype(np.uint8), cv2.DIST_L2, 5)
        signed = inside - outside
        z = o["prior_weight"] * np.sign(signed) * np.clip((np.abs(signed) - band) / band, 0.0, 1.0)
        radius = max(float(o["gate_min"]), o["gate_radius"] * size)
        z = z - o["gate_penalty"] * np.clip((outside - radius) / max(radius, 1.0), 0.0, 1.0)
        return z.astype(np.float32)

    def _match_logit(self, q, t: _Track) -> torch.Tensor:
        """The k-NN matching logit of ``q``'s grid against the label's examples and conditioning
        frame, mixed with the same plus its memory frames (see 2.)."""
        eng = self.engine
        logit = eng.grid_logit(q, t.banks())
        w = float(self.opts["memory_weight"])
        if t.memory and w > 0:
            logit = (1.0 - w) * logit + w * eng.grid_logit(q, t.banks(with_memory=True))
        return float(self.opts["match_weight"]) * logit

    def _zoom(self, frame: np.ndarray, q, label: str, res: SegmentResult, bias: float) -> None:
        """Match a clearly shrunken object again in an enlarged window around its mask (see 3b.); the
        window's mask replaces ``res.mask`` there."""
        eng, t = self.engine, self.tracks[label]
        wh, ww = q.work_image.shape[:2]
        window = zoom_window(res.mask, t.cond_fraction, wh / frame.shape[0], wh * ww)
        if window is None:
            return
        qz = eng.encode_query(window.crop(frame), long_side=window.long_side, low_precision=True)
        logit = self._match_logit(qz, t) + bias  # the frame's cut: the window is part of it
        zh, zw = qz.work_image.shape[:2]
        z = F.interpolate(logit[None, None].float(), size=(zh, zw), mode="bilinear", align_corners=False)[0, 0]
        # the frame's pass already dropped its weak parts, and the window is drawn around what it kept
        inside = eng.decode_logit(qz, z, t.colour, "none", calibrated=True, colour_weight=self._colour_weight)
        if inside.mask.any():  # a window that finds nothing does not overrule the frame
            res.mask = window.paste(res.mask, inside.mask)
            res.extra["zoom"] = window.zoom

    @torch.no_grad()
    def step(self, frame: np.ndarray) -> dict[str, SegmentResult]:
        """Segment the next frame (in whichever direction the caller walks) for every label."""
        eng = self.engine
        q = eng.encode_query(frame, long_side=self._long_side, low_precision=True)
        wh, ww = q.work_image.shape[:2]
        grey = cv2.cvtColor(q.work_image, cv2.COLOR_RGB2GRAY)
        labels = list(self.tracks)
        use_prior = self.opts["prior_weight"] > 0 or self.opts["gate_penalty"] > 0
        threshold = min(max(float(eng.opts["threshold"]), 1e-3), 1.0 - 1e-3)
        cut = float(np.log(threshold / (1.0 - threshold)))  # the decoder's threshold as a logit
        previous = [
            p if (p := self.tracks[lab].prev_prob) is not None else np.zeros((wh, ww), np.float32) for lab in labels
        ]
        warped = self._warp(grey, previous) if use_prior else previous  # no prior: no flow needed
        out: dict[str, SegmentResult] = {}
        self._frames_since_memory += 1
        add_memory = self._frames_since_memory >= int(self.opts["memory_every"])
        for label, prior in zip(labels, warped):
            t = self.tracks[label]
            if not t.banks():  # nothing known about this label: no examples, nothing tracked
                out[label] = SegmentResult(np.zeros(frame.shape[:2], bool), 0.0, {"reason": "no examples"})
                continue
            logit = self._match_logit(q, t)
            tracked = t.prev_prob is not None
            if t.stm is not None and (read := t.stm.readout(q.feats[q.base], recent=tracked)) is not None:
                # lost: the anchor alone, read everywhere, finds the object again
                read = read.clamp(0.02, 0.98)
                logit = logit + float(self.opts["readout_weight"]) * torch.log(read / (1 - read))
            bias = None
            if tracked and t.judge is not None:
                bias, _ = cycle_bias(
                    t.judge,
                    q.feats[q.base],
                    logit,
                    int(eng.opts["k"]),
                    penalty=float(self.opts["cycle_penalty"]),
                    growth=float(self.opts["cycle_growth"]),
                    cut=cut,
                )
                logit = logit + bias
            z = F.interpolate(logit[None, None].float(), size=(wh, ww), mode="bilinear", align_corners=False)[0, 0]
            if tracked and use_prior:
                z = z + torch.from_numpy(self._temporal_logit(prior)).to(z.device)
            res = eng.decode_logit(
                q, z, t.colour, self._components(label), calibrated=True, colour_weight=self._colour_weight
            )
            res.extra["tracked"] = tracked
            if bias is not None:
                res.extra["cycle_bias"] = bias
            if tracked and self.opts["zoom"]:
                self._zoom(frame, q, label, res, bias or 0.0)
            out[label] = res
            if res.mask.any():
                t.prev_prob = self._work_prob(res.mask, (wh, ww))
                if t.stm is not None:
                    t.stm.set_previous(self._memory_frame(q, res.mask))
                    if add_memory and res.extra["confidence"] >= self.opts["memory_min_score"]:
                        t.stm.add_long(t.stm.previous)  # type: ignore[arg-type]  # set just above
                if t.cond is None:  # first appearance: it becomes the conditioning frame
                    t.cond = self._encode_predicted(q, res.mask, frame)
                    t.cond_fraction = float(res.mask.mean())
                    t.stm = self._new_memory(q, res.mask)
                elif (
                    add_memory
                    and self.opts["memory_frames"] > 0
                    and res.extra["confidence"] >= self.opts["memory_min_score"]
                ):
                    # only cells surely inside / outside the predicted mask (its edge may be wrong)
                    mem = MatchBank.from_example(
                        q.feats[q.base], mask_fraction(res.mask, q.grid), fg_min=0.95, bg_max=0.05
                    ).subsample_bg(int(self.opts["memory_bg"]))
                    t.remember(mem, int(self.opts["memory_frames"]))
            else:  # lost (or not there yet): matching alone until it shows up again
                t.prev_prob = None
                if t.stm is not None:
                    t.stm.clear_recent()
            if t.thin is not None and tracked and res.mask.any():
                # to the answer only: the state above follows the matching's cells
                res.mask = t.thin.recover(frame, res.mask)
            if self.opts["boundary"] and not eng.trained and tracked and res.mask.any():
                # to the answer only too, after the thin parts (it trims their lines to their colour)
                res.mask = snap_to_colour(frame, res.mask, q.cell_side)
        if add_memory:
            self._frames_since_memory = 0
        self._prev_grey = grey
        return out


def lite_examples(engine: LiteEngine, items: Mapping[str, list[LabelledImage]]) -> dict[str, list[LiteExample]]:
    return {lab: [engine.encode_example(li) for li in lis] for lab, lis in items.items()}
