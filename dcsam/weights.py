"""Weight files in one place: resolve a path, or download into the cache with a progress bar
and a checksum, and load with clear errors (missing, truncated, wrong architecture)."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from .checkpoints import read_torch_file
from .errors import CheckpointError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightFile:
    """An official weight file: where it comes from and how to check it."""

    filename: str
    url: str | None  # None: no direct download exists; the user must supply the file
    sha256: str | None = None  # full digest or a prefix of it (torchvision / SAM naming)
    source_hint: str = ""  # where a user gets it when there is no URL


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(url: str, dest: Path, expected_sha256: str | None) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, os.fdopen(fd, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {dest.name}") as bar:
                for block in iter(lambda: resp.read(1 << 20), b""):
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
        got = digest.hexdigest()
        if expected_sha256 and not got.startswith(expected_sha256):
            raise CheckpointError(f"checksum mismatch for {url}: got sha256 {got}, expected {expected_sha256}...")
        os.replace(tmp, dest)
        # Recorded beside the file so a later copy or re-download can be compared with it.
        (dest.parent / f"{dest.name}.sha256").write_text(f"{got}  {dest.name}\n")
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def resolve_weight_file(
    spec: WeightFile,
    path: str | os.PathLike | None,
    *,
    cache_dir: Path,
    allow_download: bool,
    setting: str,
) -> Path:
    """Return a local path for ``spec``: the given ``path``, the cached copy, or a fresh download.

    ``setting`` names the option a user sets to point at the file (used in error messages).
    """
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise CheckpointError(f"{p}: weight file not found (set by {setting})")
        return p
    cached = cache_dir / spec.filename
    if cached.is_file():
        return cached
    where = spec.url or spec.source_hint or "the official release"
    if spec.url is None or not allow_download:
        raise CheckpointError(
            f"weight file {spec.filename} is not available: put it at {cached} or give its path "
            f"with {setting} (get it from {where})" + ("" if allow_download else "; downloads are disabled")
        )
    log.info("downloading %s into %s", spec.url, cached)
    try:
        _download(spec.url, cached, spec.sha256)
    except CheckpointError:
        raise
    except OSError as exc:
        raise CheckpointError(
            f"could not download {spec.filename} from {spec.url} ({exc}). Offline? Download it "
            f"elsewhere and put it at {cached}, or give its path with {setting}"
        ) from exc
    return cached


def load_state_dict_file(path: str | os.PathLike, *, key: str | None = None) -> dict[str, torch.Tensor]:
    """Load a state dict from a checkpoint file, optionally from ``ckpt[key]``; clear errors."""
    path = Path(path)
    obj = read_torch_file(path)
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            found = list(obj)[:5] if isinstance(obj, Mapping) else type(obj).__name__
            raise CheckpointError(f"{path}: expected a checkpoint with a {key!r} entry; found {found}")
        obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: does not hold a state dict of tensors")
    return dict(obj)


def load_strict(module: nn.Module, state: Mapping[str, Any], *, source: str) -> None:
    """``load_state_dict(strict=True)`` with a readable report of what does not match."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:3]}")
        if wrong:
            parts.append(f"{len(wrong)} shape mismatch(es), e.g. {wrong[:2]}")
        raise CheckpointError(f"{source} does not match this architecture: " + "; ".join(parts))
    module.load_state_dict(state, strict=True)
