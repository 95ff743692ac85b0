"""Prior backbones: frozen, shapes, and real ImageNet weights for EfficientNet-Lite0."""

import copy

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dcsam.backbones import BACKBONES, create_backbone
from dcsam.errors import CheckpointError
from dcsam.io import read_image, read_mask
from dcsam.masks import resize_mask
from dcsam.modeling.prior import masked_high_features, prior_mask


@pytest.mark.parametrize(
    "name,mid,grid",
    [("resnet50_v2", 1536, 64), ("resnet50", 1536, 64), ("vgg16_bn", 768, 32), ("efficientnet_lite0", 152, 64)],
)
def test_backbone_frozen_and_shapes(name, mid, grid):
    bb = create_backbone(name, random_weights=name != "efficientnet_lite0")
    assert not any(p.requires_grad for p in bb.parameters())
    bb.train()  # BN must stay in eval mode even when a parent module trains
    assert not any(m.training for m in bb.modules())
    assert bb.mid_channels == mid and 512 // bb.stride == grid
    with torch.no_grad():
        l2, l3 = bb.forward_mid(torch.rand(1, 3, 512, 512))
        l4 = bb.forward_high(l3)
    assert l2.shape[1] + l3.shape[1] == mid
    assert l4.shape[1] == bb.high_channels


def test_weights_without_download_give_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="resnet50_v2.pth.*--backbone-weights"):
        create_backbone("resnet50_v2", cache_dir=tmp_path, allow_download=False)


def test_torchvision_weights_load_from_path(tmp_path):
    ref = create_backbone("resnet50", random_weights=True)
    state = {k: v for k, v in ref.state_dict().items()}
    state["fc.weight"] = torch.zeros(1000, 2048)  # a classifier head in the file is ignored
    path = tmp_path / "r50.pth"
    torch.save(state, path)
    bb = create_backbone("resnet50", weights=path)
    assert all(torch.equal(bb.state_dict()[k], ref.state_dict()[k]) for k in ref.state_dict())


def _tensor(img: np.ndarray, size: int) -> torch.Tensor:
    return (
        torch.from_numpy(cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)).permute(2, 0, 1)[None].float()
        / 255
    )


def test_efficientnet_weights_are_real_imagenet(data_dir):
    """With real weights, DC-SAM's thresholded prior already finds PerSeg objects (random: no)."""
    bb = create_backbone("efficientnet_lite0")
    size = bb.input_size
    ious = []
    root = data_dir / "perseg-mini"
    for obj in ("cat", "colorful_sneaker", "duck_toy"):
        mask = read_mask(root / f"{obj}_00.png")
        m = torch.from_numpy(resize_mask(mask, size, size))[None, None].float()
        with torch.no_grad():
            _, l3 = bb.forward_mid(_tensor(read_image(root / f"{obj}_00.jpg"), size))
            s_pos, s_neg = masked_high_features(bb, l3, m), masked_high_features(bb, l3, 1 - m)
            for q in ("01", "02"):
                gt = read_mask(root / f"{obj}_{q}.png")
                _, ql3 = bb.forward_mid(_tensor(read_image(root / f"{obj}_{q}.jpg"), size))
                qh = bb.forward_high(ql3)
                diff = prior_mask(qh, s_pos[:, None]) - prior_mask(qh, s_neg[:, None])
                pred = F.interpolate(diff, size=gt.shape, mode="bilinear", align_corners=False)[0, 0].numpy() > 0
                ious.append((pred & gt).sum() / (pred | gt).sum())
    assert np.mean(ious) >= 0.75, ious


def test_efficientnet_runs_channels_last_with_the_standard_layouts_values():
    """The weights stay channels-last once loaded (the layout oneDNN's convolutions are fast in),
    and the blocks' outputs are those of the same network in the standard layout, to rounding."""
    bb = create_backbone("efficientnet_lite0")
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in bb.parameters() if p.dim() == 4)
    images = torch.rand(1, 3, 224, 320)
    fast = bb.forward_blocks(images)
    standard = copy.deepcopy(bb.net).to(memory_format=torch.contiguous_format)
    assert all(p.is_contiguous() for p in standard.parameters())
    with torch.no_grad():
        x = standard.bn1(standard.conv_stem(bb.normalize(images)))
        for block, out in zip(standard.blocks, fast):
            x = block(x)
            assert torch.allclose(out, x, atol=1e-4, rtol=1e-4)


def test_registry_names():
    assert set(BACKBONES) == {"resnet50_v2", "resnet50", "vgg16_bn", "efficientnet_lite0"}


@pytest.mark.parametrize("name", ["resnet50", "resnet50_v2"])
def test_resnet_stages_dilate_after_their_first_block(name):
    """Output stride 8 the way ``replace_stride_with_dilation`` builds it (the reference release's
    backbone): the first block of a dilated stage keeps the previous stage's dilation."""
    bb = create_backbone(name, random_weights=True)
    for layer, previous, dilation in ((bb.layer3, 1, 2), (bb.layer4, 2, 4)):
        for index, block in enumerate(layer):
            d = previous if index == 0 else dilation
            assert block.conv2.dilation == (d, d) and block.conv2.padding == (d, d)
            assert block.conv2.stride == (1, 1)
            if block.downsample is not None:
                assert block.downsample[0].stride == (1, 1)


def test_resnet50_equals_torchvision_with_stride_replaced_by_dilation():
    from torchvision.models import resnet50

    bb = create_backbone("resnet50", random_weights=True)
    tv = resnet50(weights=None, replace_stride_with_dilation=[False, True, True]).eval()
    tv.load_state_dict(bb.state_dict(), strict=False)
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        _, l3 = bb.forward_mid(x)
        ours = bb.forward_high(l3)
        y = tv.maxpool(tv.relu(tv.bn1(tv.conv1(bb.normalize(x)))))
        theirs = tv.layer4(tv.layer3(tv.layer2(tv.layer1(y))))
    assert ours.shape == theirs.shape == (1, 2048, 16, 16)
    assert torch.allclose(ours, theirs, atol=1e-4)


class _GridBackbone:
    """layer 4 = layer 3 (same grid), or 2x2 average-pooled (a coarser grid)."""

    def __init__(self, coarser: bool):
        self.coarser = coarser

    def forward_high(self, layer3: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(layer3, 2) if self.coarser else layer3.clone()


def test_layer4_prior_mask_is_the_nearest_layer3_mask():
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 10:37, 5:29] = 1  # edges off the 8-pixel cells: bilinear would give fractions
    layer3 = torch.rand(1, 4, 8, 8) + 0.5
    m3 = F.interpolate(mask, size=(8, 8), mode="nearest")
    out = masked_high_features(_GridBackbone(coarser=False), layer3, mask)
    assert torch.equal(out, layer3 * m3 * m3)
    assert set(torch.unique(out / layer3).tolist()) == {0.0, 1.0}


def test_a_coarser_layer4_gets_the_foreground_fraction():
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., :, :40] = 1
    out = masked_high_features(_GridBackbone(coarser=True), torch.ones(1, 1, 8, 8), mask)
    m3 = F.interpolate(mask, size=(8, 8), mode="nearest")
    expected = F.avg_pool2d(m3, 2) * F.interpolate(mask, size=(4, 4), mode="bilinear", align_corners=True)
    assert torch.allclose(out, expected)
