"""Dense multi-layer features and training-free foreground / background priors.

Features: several EfficientNet-Lite0 block outputs, resized to one grid (stride 8 of the working
image), each L2-normalised, concatenated and L2-normalised again, so a dot product is the mean
cosine similarity over the layers.

Priors (DC-SAM spec section 2.2, made symmetric): for every query position, the mean of its k
highest cosine similarities to the example's foreground positions (positive prior) and to its
background positions (negative prior). Their difference over a temperature is the foreground
logit; ``match="prototype"`` uses the mean foreground / background features instead.

Matching against several examples at once needs only each example's own top k: the k highest
similarities over the union of banks are among the banks' own k highest. So each bank remembers the
top-k rows of the query grids it has matched (:class:`TopkMemo`, held weakly by the query tensor) and
any combination of banks (an example plus a label's memory, every fold of a cross-validation) is a
merge of remembered rows, not a new product with every bank row.

Banks keep their rows in float16 (:data:`ROW_DTYPE`) and are matched in float32: an 854x480 example
(its bank at 512 and at its detail side 768, about 7,300 rows of 472 channels) holds 6.9 MB instead
of 13.8 MB. The rounding (about 5e-4 of a unit vector's entries) moves near ties only: on
davis16-dev, image one-shot and the video protocol's means are unchanged at three decimals (per video
within 0.003), one cross-video pair moved 0.006.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F

GRID_STRIDE = 8
ROW_DTYPE = torch.float16  # how banks hold their rows (see the module doc)


def working_size(h: int, w: int, long_side: int, multiple: int = 32) -> tuple[int, int]:
    """(height, width) with the long side near ``long_side``, both multiples of ``multiple``."""
    s = long_side / max(h, w)
    return max(multiple, int(round(h * s / multiple)) * multiple), max(
        multiple, int(round(w * s / multiple)) * multiple
    )


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    shrink = h * w < image.shape[0] * image.shape[1]
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


@torch.no_grad()
def dense_features(
    backbone,
    image: np.ndarray,
    size: tuple[int, int],
    layers: tuple[int, ...],
    device: torch.device,
    low_precision: bool = False,
    mirror: bool = False,
) -> torch.Tensor:
    """(C, h/8, w/8) unit-norm features of uint8 RGB ``image`` resized to ``size``; ``low_precision``
    runs the backbone in bfloat16 where that pays (see :func:`bf16_pays`). ``mirror``: each cell's
    features are the mean of its own and those of the same place in the mirrored image (one batch of
    two): a network's features are not mirror-symmetric, what a thing is does not change in a
    mirror, so the mean keeps what both views agree on."""
    img = resize_image(image, size)
    x = torch.from_numpy(np.ascontiguousarray(img)).to(device).permute(2, 0, 1)[None].float().div_(255.0)
    if mirror:
        x = torch.cat([x, x.flip(-1)])
    if low_precision and bf16_pays(device):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            blocks = backbone.forward_blocks(x)
    else:
        blocks = backbone.forward_blocks(x)
    grid = (size[0] // GRID_STRIDE, size[1] // GRID_STRIDE)
    parts = []
    for i in layers:
        f = blocks[i].float()
        if f.shape[-2:] != grid:
            f = F.interpolate(f, size=grid, mode="bilinear", align_corners=False)
        f = F.normalize(f, dim=1)
        if mirror:
            f = f[:1] + f[1:].flip(-1)
        parts.append(F.normalize(f, dim=1))
    return F.normalize(torch.cat(parts, 1), dim=1)[0]


def mask_fraction(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Fraction of foreground in each grid cell (area average)."""
    small = cv2.resize(mask.astype(np.uint8) * 255, (grid[1], grid[0]), interpolation=cv2.INTER_AREA)
    return small.astype(np.float32) * (1.0 / 255.0)


class TopkMemo:
    """Values computed from a query tensor, kept while that tensor lives (keyed by its identity)."""

    def __init__(self) -> None:
        self._rows: dict[tuple[int, str, int], tuple[weakref.ref, torch.Tensor]] = {}

    def get(self, query: torch.Tensor, part: str, k: int, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        key = (id(query), part, k)
        hit = self._rows.get(key)
        if hit is not None and hit[0]() is query:
            return hit[1]
        value = compute()
        rows = self._rows

        def forget(_: weakref.ref, key: tuple[int, str, int] = key) -> None:
            rows.pop(key, None)

        rows[key] = (weakref.ref(query, forget), value)
        return value

    def __len__(self) -> int:
        return len(self._rows)

    def __reduce__(self) -> tuple:
        # a copy or a pickled bank (a training twin, a Ray actor) starts empty: its queries are elsewhere
        return (TopkMemo, ())


@dataclass(eq=False)
class MatchBank:
    """Foreground and background features of one or more examples (rows are unit vectors, held as
    :data:`ROW_DTYPE` whatever they are given in)."""

    fg: torch.Tensor  # (Nf, C)
    bg: torch.Tensor  # (Nb, C)
    # top-k similarity rows of the query grids matched against this bank (see the module doc)
    topk_memo: TopkMemo = field(default_factory=TopkMemo, repr=False)
    _memory_forms: dict[int, MatchBank] = field(default_factory=dict, repr=False)
    _bf16_rows: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.fg = self.fg.to(ROW_DTYPE)  # no copy when already so (a subsample, a concatenation)
        self.bg = self.bg.to(ROW_DTYPE)

    def topk(self, query: torch.Tensor, part: str, k: int) -> torch.Tensor:
        """(h*w, min(k, rows)) highest cosine similarities of each position of the (C, h, w) ``query``
        to this bank's ``part`` ("fg" or "bg") rows, in decreasing order; remembered per query tensor."""
        rows = self.fg if part == "fg" else self.bg

        def low() -> torch.Tensor:  # made once: a video matches every frame against the same bank
            if part not in self._bf16_rows:
                self._bf16_rows[part] = bf16_rows(rows)
            return self._bf16_rows[part]

        def compute() -> torch.Tensor:
            return topk_similarities(query.reshape(query.shape[0], -1).T, rows, k, low_rows=low)

        return self.topk_memo.get(query, part, k, compute)

    @staticmethod
    def from_example(
        feats: torch.Tensor, frac: np.ndarray, fg_min: float = 0.5, bg_max: float = 0.5, max_bg: int = 6000
    ) -> MatchBank:
        c = feats.shape[0]
        flat = feats.reshape(c, -1).T
        frac_t = torch.from_numpy(frac.ravel()).to(flat.device)
        fg_sel = frac_t >= fg_min
        if not bool(fg_sel.any()):  # tiny object: the cells that hold most of it
            fg_sel = frac_t >= frac_t.max() * 0.5
        bg_sel = frac_t < bg_max
        bg = flat[bg_sel]
        if bg.shape[0] > max_bg:  # bound the memory of huge examples: an even subsample
            bg = bg[torch.linspace(0, bg.shape[0] - 1, max_bg, device=bg.device).long()]
        if bg.shape[0] == 0:  # an all-foreground example: no negatives, use a far-away dummy
            bg = -flat[fg_sel].mean(0, keepdim=True)
            bg = F.normalize(bg, dim=1)
        return MatchBank(fg=flat[fg_sel].contiguous(), bg=bg.contiguous())

    def subsample_bg(self, limit: int) -> MatchBank:
        if self.bg.shape[0] <= limit:
            return self
        idx = torch.linspace(0, self.bg.shape[0] - 1, limit, device=self.bg.device).long()
        return MatchBank(fg=self.fg, bg=self.bg[idx].contiguous())

    def memory_form(self, max_bg: int) -> MatchBank:
        """This bank as a label's matching memory keeps it: at most ``max_bg`` background rows. The
        same object on every call, so the matches it remembers serve every fine-tune run that puts
        this example in the memory."""
        if max_bg not in self._memory_forms:
            self._memory_forms[max_bg] = self.subsample_bg(max_bg)
        return self._memory_forms[max_bg]

    @staticmethod
    def concat(banks: list[MatchBank]) -> MatchBank:
        if len(banks) == 1:
            return banks[0]
        return MatchBank(fg=torch.cat([b.fg for b in banks]), bg=torch.cat([b.bg for b in banks]))


_BF16_PAYS: dict[str, bool] = {}


def bf16_pays(device: torch.device) -> bool:
    """Whether bfloat16 products run natively on ``device``: a GPU that supports them, or a CPU with
    bfloat16 instructions (AVX512-BF16 or AMX: about twice as fast as float32 there; elsewhere it is
    emulated and slower). Decided from the hardware, never by timing, so every process on a machine
    makes the same choice and gives the same answers."""
    if device.type not in _BF16_PAYS:
        if device.type == "cuda":
            _BF16_PAYS[device.type] = bool(torch.cuda.is_bf16_supported())
        elif device.type == "cpu":
            try:
                with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
                    flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
            except OSError:
                flags = []
            _BF16_PAYS[device.type] = "avx512_bf16" in flags or "amx_bf16" in flags
        else:
            _BF16_PAYS[device.type] = False
    return _BF16_PAYS[device.type]


ROW_BUCKET = 512


def bf16_rows(rows: torch.Tensor) -> torch.Tensor:
    """``rows`` (M, C) in bfloat16 with zero rows appended up to a multiple of ``ROW_BUCKET``: oneDNN
    builds and keeps a kernel per shape of a bfloat16 product (about 3 MB each on a 2-core Xeon), and a
    video's banks change their number of rows every frame, so unpadded products grew a process by about
    1 MB per frame (1,000 frames: 1.0 -> 1.9 GB); padded, a handful of shapes serve every frame and
    every image."""
    m = rows.shape[0]
    padded = rows.new_zeros((-(-m // ROW_BUCKET) * ROW_BUCKET, rows.shape[1]), dtype=torch.bfloat16)
    padded[:m] = rows
    return padded


def topk_similarities(
    q: torch.Tensor,
    bank: torch.Tensor,
    k: int,
    *,
    low_precision: bool | None = None,
    low_rows: Callable[[], torch.Tensor] | None = None,
    chunk: int = 1024,
) -> torch.Tensor:
    """(N, min(k, M)) highest similarities of the N rows of ``q`` to the M rows of ``bank``.

    On a large bank where bfloat16 pays, the product that picks the k rows runs in bfloat16 and the k
    picked are rescored in float32: each value is exact, and a row that bfloat16's rounding (about 1e-3
    on a cosine) swapped in for another is within that of the row it replaced. ``low_precision``: None
    decides by :func:`bf16_pays`; ``low_rows`` gives the bank as :func:`bf16_rows` makes it (else it
    is made here). A bank held at lower precision (:data:`ROW_DTYPE`) is matched in ``q``'s."""
    m = bank.shape[0]
    k = max(1, min(k, m))
    large = m > 8 * k and q.shape[0] * m >= 1 << 20
    low = large and (bf16_pays(q.device) if low_precision is None else low_precision)
    rows = (low_rows() if low_rows is not None else bf16_rows(bank)) if low else bank.to(q.dtype)
    out = []
    for s in range(0, q.shape[0], chunk):
        part = q[s : s + chunk]
        if low:  # both sides padded (see bf16_rows): a query's last chunk comes in as many sizes as images
            sim = bf16_rows(part) @ rows.T
            idx = sim[: part.shape[0], :m].topk(k, dim=1).indices  # padding rows are neither's
            exact = torch.einsum("nc,nkc->nk", part, bank[idx].to(part.dtype))  # gathers (rows, k, C): chunk bounds it
            out.append(exact.sort(dim=1, descending=True).values)
        else:
            sim = part @ rows.T
            out.append(sim.topk(k, dim=1).values if k > 1 else sim.max(1, keepdim=True).values)
    return torch.cat(out)


def _merged_topk_mean(rows: list[torch.Tensor], k: int) -> torch.Tensor:
    """Mean of the k highest values per position over several banks' top-k rows (each (N, <= k))."""
    merged = rows[0] if len(rows) == 1 else torch.cat(rows, 1)
    if merged.shape[1] > k:
        merged = merged.topk(k, dim=1).values
    return merged.mean(1)


@torch.no_grad()
def priors(
    query: torch.Tensor, banks: MatchBank | Sequence[MatchBank], match: str = "knn", k: int = 5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive and negative priors (each (h, w)) of query features ``(C, h, w)`` against the union of
    ``banks`` (one bank, or several: the examples of a label and its memory)."""
    c, h, w = query.shape
    bank_list = [banks] if isinstance(banks, MatchBank) else list(banks)
    if match in ("knn", "max"):  # "max" is DC-SAM's prior: the highest cosine similarity
        kk = 1 if match == "max" else max(1, k)
        pos = _merged_topk_mean([b.topk(query, "fg", kk) for b in bank_list], kk)
        neg = _merged_topk_mean([b.topk(query, "bg", kk) for b in bank_list], kk)
    elif match == "prototype":
        bank = MatchBank.concat(bank_list)
        q = query.reshape(c, -1).T
        pos = q @ F.normalize(bank.fg.to(q.dtype).mean(0), dim=0)
        neg = q @ F.normalize(bank.bg.to(q.dtype).mean(0), dim=0)
    else:
        raise ValueError(f"unknown match {match!r}; use knn, prototype or max")
    return pos.reshape(h, w), neg.reshape(h, w)
