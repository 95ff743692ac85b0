"""The lite engine's frozen feature extractor: EfficientNet-Lite0 with its bundled ImageNet weights,
at an output stride the lite engine chooses (it sets the engine's speed and detail)."""

from __future__ import annotations

from pathlib import Path

from ..backbones.efficientnet import EfficientNetLite0


def lite_backbone(output_stride: int = 32, weights: str | Path | None = None, random_weights: bool = False) -> EfficientNetLite0:
    net = EfficientNetLite0(output_stride=output_stride)
    if not random_weights:
        net.load_bundled(Path(weights) if weights else None)
    return net.freeze()
