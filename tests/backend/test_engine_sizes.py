"""DC-SAM small enough for a CPU smoke run, from the backend's settings: random SAM weights only when asked for,
named in the model version, never a fallback; the input sizes reach the engine's config."""

from __future__ import annotations

import pytest

from backend.engine_select import choose_engine, model_version, segmenter_config
from backend.settings import BackendSettings

TINY = {
    "DCSAM_ENGINE": "dcsam",
    "DCSAM_RANDOM_SAM_WEIGHTS": "1",
    "DCSAM_SAM_IMAGE_SIZE": "256",
    "DCSAM_IMAGE_SIZE": "128",
    "DCSAM_BACKBONE_INPUT_SIZE": "256",
}


def test_random_sam_weights_are_explicit_and_named(tmp_path):
    settings = BackendSettings.from_env({**TINY, "DCSAM_CACHE_DIR": str(tmp_path)})
    choice = choose_engine(settings)
    assert choice.engine == "dcsam" and choice.sam_checkpoint is None and "random weights" in choice.reason
    config = segmenter_config(settings, choice)
    assert config.random_sam_weights and not config.random_backbone_weights
    assert (config.sam_image_size, config.image_size, config.backbone_input_size) == (256, 128, 256)
    version = model_version(settings, choice)
    assert version.startswith(f"dcsam-{settings.sam}-coldstart-random-")
    # other sizes, another version
    other = BackendSettings.from_env({**TINY, "DCSAM_SAM_IMAGE_SIZE": "512", "DCSAM_CACHE_DIR": str(tmp_path)})
    assert model_version(other, choose_engine(other)) != version


@pytest.mark.parametrize("extra", [{"DCSAM_ENGINE": "auto"}, {"DCSAM_SAM_CHECKPOINT": "sam.pt"}])
def test_random_sam_weights_are_never_chosen_implicitly(tmp_path, extra):
    settings = BackendSettings.from_env({**TINY, "DCSAM_CACHE_DIR": str(tmp_path), **extra})
    with pytest.raises(ValueError, match="DCSAM_RANDOM_SAM_WEIGHTS"):
        choose_engine(settings)


def test_default_versions_do_not_change_with_the_size_settings(tmp_path):
    base = {"DCSAM_ENGINE": "dcsam", "DCSAM_CACHE_DIR": str(tmp_path)}
    plain = BackendSettings.from_env(base)
    explicit = BackendSettings.from_env({**base, "DCSAM_IMAGE_SIZE": "512"})  # the default, spelt out
    assert model_version(plain, choose_engine(plain)) == model_version(explicit, choose_engine(explicit))
    assert "random" not in model_version(plain, choose_engine(plain))
