"""dcsam.training.twin: a training twin shares the frozen networks, owns its trainable part; frozen features
are computed once per training run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dcsam.api import InContextSegmenter
from dcsam.engines.base import Episode, LabelledImage
from dcsam.training.twin import cached_features, shared_storages, training_twin, warm_features


def _scene(i: int, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(i)
    img = (rng.random((size, size, 3)) * 60 + 40).astype(np.uint8)
    mask = np.zeros((size, size), bool)
    y, x = 10 + (i * 5) % 30, 12 + (i * 7) % 30
    mask[y : y + 30, x : x + 35] = True
    img[mask] = (200, 60, 50)
    return img, mask


@pytest.fixture(scope="module")
def lite():
    return InContextSegmenter.from_config(engine="lite", device="cpu").engine


def _episode(n: int = 3) -> list[Episode]:
    ims = [LabelledImage(*_scene(i)) for i in range(n)]
    return [Episode(support=ims[:1], query=ims[1:], label="box")]


def test_twin_shares_the_frozen_networks_and_owns_its_trainable_part(lite):
    lite.load_trainable_state_dict({})
    twin = training_twin(lite)
    assert twin.backbone is lite.backbone  # frozen: shared, not a second model
    assert twin.head is not lite.head and twin.memory is not lite.memory
    assert not any(p.requires_grad for p in twin.backbone.parameters())
    version = lite.version
    twin.finetune(_episode(), steps=3)
    assert twin.trained and twin.version != version
    assert not lite.trained and lite.version == version  # the original is untouched
    assert not shared_storages(lite, twin)
    # trained originals too: the twin's copy of the head is its own
    lite.load_trainable_state_dict(twin.trainable_state_dict())
    twin2 = training_twin(lite)
    with torch.no_grad():
        next(twin2.head.parameters()).add_(1.0)
    assert twin2.version != lite.version
    lite.load_trainable_state_dict({})


def test_cached_features_encode_each_image_once_and_change_nothing(lite):
    lite.load_trainable_state_dict({})
    plain = training_twin(lite)
    cached = training_twin(lite)
    ep = _episode()
    plain.finetune(ep, steps=4)
    with cached_features(cached) as counts:
        warm_features(cached, [(li.image, li.mask) for li in ep[0].support + ep[0].query])
        assert counts == {"hits": 0, "misses": 6}  # 3 images: one example and one query encoding each
        cached.finetune(ep, steps=4)
        cached.load_trainable_state_dict({})
        cached.finetune(ep, steps=4)  # a second run (another fold) encodes nothing
        assert counts == {"hits": 12, "misses": 6}
        query = _scene(7)[0]
        ex = [cached.encode_example(ep[0].support[0])]
        a = cached.predict([query], {"box": ex})[0]["box"].mask
    assert "encode_query" not in vars(cached)  # the block leaves the engine as it was
    b = plain.predict([query], {"box": [plain.encode_example(ep[0].support[0])]})[0]["box"].mask
    assert plain.version == cached.version  # the same training, with or without the cache
    assert np.array_equal(a, b)


def test_cached_features_key_on_content_and_keep_an_instance_patch(lite):
    twin = training_twin(lite)
    calls = []
    twin.encode_query = lambda image: calls.append(image.sum()) or image.sum()  # an instance-level patch
    img = _scene(1)[0]
    with cached_features(twin):
        twin.encode_query(img)
        twin.encode_query(img.copy())  # another array, the same pixels: cached
        twin.encode_query(img[::-1].copy())  # other pixels: encoded
    assert len(calls) == 2
    twin.encode_query(img)
    assert len(calls) == 3  # the patch is back, uncached


def test_cached_features_serve_the_queries_of_repeated_predictions(lite):
    # cross-validation scores the same held-out images after every run: their features are encoded once
    twin = training_twin(lite)
    example = twin.encode_example(LabelledImage(*_scene(0)))
    queries = [_scene(1)[0], _scene(2)[0]]
    with cached_features(twin) as counts:
        first = twin.predict(queries, {"box": [example]})
        again = twin.predict(queries, {"box": [example]})
    assert counts == {"hits": 2, "misses": 2}
    assert all(np.array_equal(a["box"].mask, b["box"].mask) for a, b in zip(first, again, strict=True))
