"""Space-time memory readout for lite video propagation: soft labels carried by feature affinity.

Each memory frame holds its grid features (keys, unit vectors, the lite engine's stride-8 grid)
and its mask as soft labels (values: the foreground fraction of each cell). A query cell reads
the values of its ``topk`` most similar memory cells, weighted by a softmax of the cosine
similarities over ``temperature``: ``p = sum softmax(sim / T) * value``.

Which memory cells a query cell may read:

* the anchor (the conditioning frame: given or first predicted mask), everywhere in the frame:
  it is the one certain label, and a global read lets an object that moved far or left and came
  back be found again;
* the recent frames (the previous frame and a few sparse older ones) only inside a local window
  (``radius`` cells around the query cell's position): between nearby frames an object moves
  little, so a look-alike elsewhere cannot borrow the object's label, and an object that grows
  or moves keeps its label from the cells next to it (a matcher against the first frame alone
  cannot know that the object is now ten times bigger).

State is bounded: the anchor, the previous frame and at most ``long_frames`` sparse frames.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch


@dataclass
class MemoryFrame:
    """One frame in memory: keys (N, C) and soft foreground labels (N,) on a (h, w) grid."""

    keys: torch.Tensor
    values: torch.Tensor
    grid: tuple[int, int]

    @staticmethod
    def from_grid(feats: torch.Tensor, fg_fraction: torch.Tensor) -> MemoryFrame:
        """``feats`` (C, h, w) unit features, ``fg_fraction`` (h, w) in [0, 1]."""
        c, h, w = feats.shape
        return MemoryFrame(
            keys=feats.reshape(c, -1).T.contiguous(),
            values=fg_fraction.reshape(-1).to(feats.dtype).contiguous(),
            grid=(h, w),
        )


class SpaceTimeMemory:
    """The anchor frame plus a bounded set of recent frames; :meth:`readout` gives a foreground
    probability per query cell."""

    def __init__(
        self, *, radius: int = 12, topk: int = 20, temperature: float = 0.05, long_frames: int = 2, chunk: int = 1024
    ) -> None:
        if radius < 1 or topk < 1 or temperature <= 0 or long_frames < 0:
            raise ValueError("radius, topk >= 1, temperature > 0, long_frames >= 0")
        self.radius = int(radius)
        self.topk = int(topk)
        self.temperature = float(temperature)
        self.chunk = int(chunk)
        self.anchor: MemoryFrame | None = None
        self.previous: MemoryFrame | None = None
        self.long: deque[MemoryFrame] = deque(maxlen=int(long_frames) or None)
        self.long_frames = int(long_frames)
        self._window: tuple[tuple[int, int], torch.Tensor] | None = None

    # -- state -----------------------------------------------------------------------------------
    def set_anchor(self, frame: MemoryFrame) -> None:
        self.anchor = frame

    def set_previous(self, frame: MemoryFrame | None) -> None:
        self.previous = frame

    def add_long(self, frame: MemoryFrame) -> None:
        if self.long_frames > 0:
            self.long.append(frame)

    def clear_recent(self) -> None:
        """Forget every frame but the anchor (a lost track, or a new direction)."""
        self.previous = None
        self.long.clear()

    def frames(self) -> int:
        """How many frames are held (anchor included)."""
        return int(self.anchor is not None) + int(self.previous is not None) + len(self.long)

    def recent(self) -> list[MemoryFrame]:
        return [*self.long, *([self.previous] if self.previous is not None else [])]

    # -- readout ---------------------------------------------------------------------------------
    def _window_mask(self, grid: tuple[int, int], device: torch.device) -> torch.Tensor:
        """(M, M) bool: memory cell j lies within ``radius`` cells of query cell i (same grid)."""
        if self._window is None or self._window[0] != grid or self._window[1].device != device:
            h, w = grid
            ys = torch.arange(h, device=device).repeat_interleave(w)
            xs = torch.arange(w, device=device).repeat(h)
            near = ((ys[:, None] - ys[None, :]).abs() <= self.radius) & (
                (xs[:, None] - xs[None, :]).abs() <= self.radius
            )
            self._window = (grid, near)
        return self._window[1]

    @torch.no_grad()
    def readout(self, query: torch.Tensor, *, recent: bool = True) -> torch.Tensor | None:
        """(h, w) foreground probability of query features (C, h, w); None with nothing in memory.

        ``recent=False`` reads the anchor alone (re-detection after the object was lost).
        """
        frames = ([self.anchor] if self.anchor is not None else []) + (self.recent() if recent else [])
        if not frames:
            return None
        c, h, w = query.shape
        q = query.reshape(c, -1).T
        keys = torch.cat([f.keys for f in frames])
        values = torch.cat([f.values for f in frames])
        # which memory columns need the local window (recent frames on the query's grid)
        local = [f is not self.anchor and f.grid == (h, w) for f in frames]
        win = self._window_mask((h, w), q.device) if any(local) else None
        k = min(self.topk, keys.shape[0])
        out = torch.empty(q.shape[0], dtype=q.dtype, device=q.device)
        for s in range(0, q.shape[0], self.chunk):
            sim = q[s : s + self.chunk] @ keys.T
            if win is not None:
                col = 0
                for f, is_local in zip(frames, local):
                    n = f.keys.shape[0]
                    if is_local:
                        sim[:, col : col + n].masked_fill_(~win[s : s + self.chunk], float("-inf"))
                    col += n
            top, idx = sim.topk(k, dim=1)
            weights = torch.softmax(top / self.temperature, dim=1)
            out[s : s + self.chunk] = (weights * values[idx]).sum(1)
        return out.reshape(h, w)
