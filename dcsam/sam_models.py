"""Base segmentation models by name (SAM 1 and SAM 2 / 2.1), their official weight files,
and building them frozen with strict checkpoint loading.

    build_sam_model("sam2.1_hiera_t", checkpoint="sam2.1_hiera_tiny.pt")
    build_sam_model("vit_b", random_weights=True)   # tests / benchmarks, logged loudly
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .config import default_cache_dir
from .weights import WeightFile, load_state_dict_file, load_strict, resolve_weight_file

log = logging.getLogger(__name__)

_SAM1_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
_SAM20_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/072824/"
_SAM21_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"


@dataclass(frozen=True)
class SamModelSpec:
    name: str
    family: str  # "sam1" | "sam2"
    weights: WeightFile
    arch: str  # SAM 1 registry key, or the SAM 2 hydra config name


def _sam1(name: str, filename: str, sha256: str) -> SamModelSpec:
    return SamModelSpec(name, "sam1", WeightFile(filename, _SAM1_URL + filename, sha256), name)


def _sam2(name: str, version: str, size: str, filename_size: str) -> SamModelSpec:
    prefix = "sam2.1" if version == "2.1" else "sam2"
    filename = f"{prefix}_hiera_{filename_size}.pt"
    url = (_SAM21_URL if version == "2.1" else _SAM20_URL) + filename
    # No published digest: the first download records its sha256 next to the file (see weights.py).
    return SamModelSpec(name, "sam2", WeightFile(filename, url, None), f"configs/{prefix}/{prefix}_hiera_{size}.yaml")


SAM_MODELS: dict[str, SamModelSpec] = {
    spec.name: spec
    for spec in [
        _sam1("vit_b", "sam_vit_b_01ec64.pth", "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"),
        _sam1("vit_l", "sam_vit_l_0b3195.pth", "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622"),
        _sam1("vit_h", "sam_vit_h_4b8939.pth", "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e"),
        *[
            _sam2(f"{prefix}_hiera_{size}", version, size, fsize)
            for prefix, version in (("sam2.1", "2.1"), ("sam2", "2.0"))
            for size, fsize in (("t", "tiny"), ("s", "small"), ("b+", "base_plus"), ("l", "large"))
        ],
    ]
}


def _build_arch(spec: SamModelSpec, image_size: int | None = None) -> nn.Module:
    if spec.family == "sam1":
        from segment_anything import sam_model_registry

        if image_size not in (None, 1024):
            raise ValueError("SAM 1 models only run at 1024x1024; sam_image_size applies to SAM 2")
        return sam_model_registry[spec.arch](checkpoint=None)
    import sam2  # noqa: F401  (registers its config module with hydra)
    from hydra import compose
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    # The same post-processing overrides as sam2.build_sam2 (dynamic multimask via stability).
    overrides = [
        "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
        "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
        "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
    ]
    if image_size is not None:
        overrides.append(f"++model.image_size={image_size}")
    cfg = compose(config_name=spec.arch, overrides=overrides)
    OmegaConf.resolve(cfg)
    return instantiate(cfg.model, _recursive_=True)


def get_spec(name: str) -> SamModelSpec:
    if name not in SAM_MODELS:
        raise ValueError(f"unknown SAM model {name!r}; choose one of {sorted(SAM_MODELS)}")
    return SAM_MODELS[name]


def build_sam_model(
    name: str,
    *,
    checkpoint: str | Path | None = None,
    random_weights: bool = False,
    cache_dir: Path | None = None,
    allow_download: bool = True,
    device: torch.device | str = "cpu",
    meta: bool = False,
    image_size: int | None = None,
) -> nn.Module:
    """Build SAM model ``name`` in eval mode, frozen, with its official weights.

    ``meta=True``: architecture only, no weights loaded (for counting parameters); SAM 1 is
    built on the meta device, SAM 2 on the CPU.
    ``random_weights=True`` must be asked for explicitly; it is logged as a warning.
    ``image_size`` changes SAM 2's input size (default 1024), e.g. for tiny CPU training runs.
    """
    spec = get_spec(name)
    if meta and spec.family == "sam1":  # SAM 2's Hiera calls .item() while building: no meta there
        with torch.device("meta"):
            model = _build_arch(spec, image_size)
        return model.eval().requires_grad_(False)
    if meta or random_weights:
        if not meta:
            log.warning("SAM model %s: RANDOM weights (asked for explicitly)", name)
        model = _build_arch(spec, image_size)
    else:
        path = resolve_weight_file(
            spec.weights,
            checkpoint,
            cache_dir=cache_dir or default_cache_dir(),
            allow_download=allow_download,
            setting="--sam-checkpoint / DCSAM_SAM_CHECKPOINT",
        )
        state = load_state_dict_file(path, key="model" if spec.family == "sam2" else None)
        model = _build_arch(spec, image_size)
        load_strict(model, state, source=f"{path} ({name})")
    return model.to(device).eval().requires_grad_(False)


def official_state_dict(model: nn.Module, family: str) -> dict:
    """What an official checkpoint file holds for ``model`` (SAM 2 wraps it in {"model": ...})."""
    state = model.state_dict()
    return {"model": state} if family == "sam2" else state
