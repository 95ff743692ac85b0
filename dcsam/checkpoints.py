"""Our own checkpoint format for trained prompt generators (and the lite engine's head):
a small file with the weights and the settings they need, written atomically."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError
from .io import atomic_write_bytes

FORMAT = "dcsam-checkpoint/1"


def save_checkpoint(
    path: str | Path, kind: str, state_dict: Mapping[str, torch.Tensor], settings: Mapping[str, Any], **extra: Any
) -> str:
    """Write ``{format, kind, settings, state_dict, ...}`` atomically; returns a short content hash."""
    buf = io.BytesIO()
    torch.save(
        {"format": FORMAT, "kind": kind, "settings": dict(settings), "state_dict": dict(state_dict), **extra}, buf
    )
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()[:12]


def read_torch_file(path: str | Path) -> Any:
    """``torch.load`` of a file on the CPU with ``weights_only=True`` (tensors and plain containers
    only: a checkpoint from elsewhere cannot run code); CheckpointError for a missing file or one
    that does not load."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip / pickle errors from truncated or foreign files
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({path.stat().st_size} bytes; truncated or corrupt?): {exc}"
        ) from exc


def load_checkpoint(path: str | Path, kind: str) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, checking its format and ``kind``."""
    obj = read_torch_file(path)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a dcsam checkpoint (expected format {FORMAT!r})")
    if obj.get("kind") != kind:
        raise CheckpointError(f"{path}: holds a {obj.get('kind')!r} checkpoint, expected {kind!r}")
    return obj


def clone_state(state: Any) -> Any:
    """A deep copy of a (nested) state dict: tensors detached and cloned, containers copied."""
    if isinstance(state, torch.Tensor):
        return state.detach().clone()
    if isinstance(state, dict):
        return {k: clone_state(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(clone_state(v) for v in state)
    return state


def state_dict_digest(state: Mapping[str, torch.Tensor]) -> str:
    """Short hash of weights, for model versions that change whenever the weights do."""
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().view(-1).to(torch.float32).numpy().tobytes())
    return digest.hexdigest()[:8]
