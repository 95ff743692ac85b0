"""Official-format checkpoints load strictly; bad files and missing weights give clear errors."""

import pytest
import torch

from dcsam.errors import CheckpointError
from dcsam.sam_models import SAM_MODELS, build_sam_model, official_state_dict


@pytest.mark.parametrize("name", ["sam2.1_hiera_t", "vit_b"])
def test_official_format_checkpoint_loads_strictly(tmp_path, name):
    torch.manual_seed(0)
    model = build_sam_model(name, random_weights=True)
    path = tmp_path / SAM_MODELS[name].weights.filename
    torch.save(official_state_dict(model, SAM_MODELS[name].family), path)
    loaded = build_sam_model(name, checkpoint=path)
    ref, got = model.state_dict(), loaded.state_dict()
    assert ref.keys() == got.keys()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert not any(p.requires_grad for p in loaded.parameters())
    assert not loaded.training


def test_truncated_file_gives_clear_error(tmp_path):
    model = build_sam_model("sam2.1_hiera_t", random_weights=True)
    good = tmp_path / "good.pt"
    torch.save(official_state_dict(model, "sam2"), good)
    bad = tmp_path / "sam2.1_hiera_tiny.pt"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        build_sam_model("sam2.1_hiera_t", checkpoint=bad)


def test_wrong_checkpoint_gives_clear_error(tmp_path):
    model = build_sam_model("sam2.1_hiera_t", random_weights=True)
    path = tmp_path / "tiny.pt"
    torch.save(official_state_dict(model, "sam2"), path)
    with pytest.raises(CheckpointError, match="does not match this architecture"):
        build_sam_model("sam2.1_hiera_s", checkpoint=path)
    with pytest.raises(CheckpointError, match="'model' entry"):
        torch.save(model.state_dict(), path)  # a SAM 2 file without the {"model": ...} wrapper
        build_sam_model("sam2.1_hiera_t", checkpoint=path)


def test_missing_weights_offline_names_file_and_setting(tmp_path):
    with pytest.raises(CheckpointError) as info:
        build_sam_model("vit_h", cache_dir=tmp_path, allow_download=False)
    msg = str(info.value)
    assert "sam_vit_h_4b8939.pth" in msg and "--sam-checkpoint" in msg and "DCSAM_SAM_CHECKPOINT" in msg
    with pytest.raises(CheckpointError, match="not found"):
        build_sam_model("sam2.1_hiera_t", checkpoint=tmp_path / "nope.pt")


def test_every_named_model_has_weights_and_architecture():
    expected = {"vit_b", "vit_l", "vit_h"} | {
        f"{p}_hiera_{s}" for p in ("sam2.1", "sam2") for s in ("t", "s", "b+", "l")
    }
    assert set(SAM_MODELS) == expected
    for spec in SAM_MODELS.values():
        assert spec.weights.url.startswith("https://") and spec.weights.url.endswith(spec.weights.filename)
