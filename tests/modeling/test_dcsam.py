"""DC-SAM model: shapes, K-shot, gradients, the release switch, and SAM decoding."""

from types import SimpleNamespace

import pytest
import torch

from dcsam.build import build_dcsam
from dcsam.config import SegmenterConfig
from dcsam.modeling import SamAdapter, SamFeatures
from dcsam.modeling.dcsam import QueryFeatures, SupportFeatures


def fake_sam_features(b: int, family: str) -> SamFeatures:
    embed = torch.randn(b, 256, 64, 64)
    if family == "sam2":
        return SamFeatures(embed, [torch.randn(b, 32, 256, 256), torch.randn(b, 64, 128, 128)])
    return SamFeatures(embed)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = SegmenterConfig(engine="dcsam", sam="sam2.1_hiera_t", backbone="efficientnet_lite0", random_sam_weights=True)
    return build_dcsam(cfg).eval()


def encode(model, b=2, k=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    q_img = torch.rand(b, 3, 256, 256, generator=g)
    s_img = torch.rand(b * k, 3, 256, 256, generator=g)
    s_mask = torch.zeros(b * k, 1, 256, 256)
    s_mask[:, :, 64:192, 48:160] = 1
    query = model.encode_query(q_img, sam=fake_sam_features(b, "sam2"))
    support = model.encode_support(s_img, s_mask, sam=fake_sam_features(b * k, "sam2"))
    return query, support


def test_output_shapes(model):
    query, support = encode(model, b=2)
    out = model.forward_features(query, support)
    assert out["prior_pos"].shape == (2, 1, 64, 64) and out["prior_neg"].shape == (2, 1, 64, 64)
    assert 0.0 <= float(out["prior_pos"].min()) and float(out["prior_pos"].max()) <= 1.0 + 1e-5
    assert out["tokens_pos"].shape == (2, 25, 256) and out["tokens_neg"].shape == (2, 25, 256)
    assert out["logits"].shape == (2, 1, 512, 512)
    assert out["coarse_logits"].shape == (2, 1, 512, 512)
    assert out["low_res_logits"].shape == (2, 1, 256, 256)
    assert torch.isfinite(out["logits"]).all()


def test_merged_maps_and_sparse_prompt_shapes(model):
    query, support = encode(model, b=2)
    gen = model.generator
    pp, pn = model.priors(query, support)
    s_mask = support.mask.view(2, 1, 1, 64, 64)
    q_sam = gen.sam_features(query.sam.embed, query.sam.high_res)
    s_sam = gen.sam_features(support.sam.embed, support.sam.high_res)
    maps = gen.fuse(query.mid, q_sam, support.mid, s_sam, s_mask, pp, pn)
    assert maps["query_pos"].shape == (2, 256, 64, 64) and maps["query_neg"].shape == (2, 256, 64, 64)
    assert maps["support_pos"].shape == (2, 1, 256, 64, 64)
    captured = {}
    original = model.sam.decode_tokens

    def spy(feats, sparse):
        captured["sparse"] = sparse
        return original(feats, sparse)

    model.sam.decode_tokens = spy
    try:
        model.forward_features(query, support)
    finally:
        model.sam.decode_tokens = original
    assert captured["sparse"].shape == (2, 50, 256)


def test_k_shot_uses_every_shot(model):
    torch.manual_seed(3)
    query, support = encode(model, b=1, k=3)
    base = model.forward_features(query, support)["low_res_logits"]
    for shot in range(3):
        _, other = encode(model, b=1, k=3, seed=10 + shot)
        changed = type(support)(
            *(
                torch.cat([t[:shot], o[shot : shot + 1], t[shot + 1 :]])
                for t, o in (
                    (support.mid, other.mid),
                    (support.mask, other.mask),
                    (support.high_pos, other.high_pos),
                    (support.high_neg, other.high_neg),
                )
            ),
            SamFeatures(
                torch.cat([support.sam.embed[:shot], other.sam.embed[shot : shot + 1], support.sam.embed[shot + 1 :]]),
                [
                    torch.cat([h[:shot], o[shot : shot + 1], h[shot + 1 :]])
                    for h, o in zip(support.sam.high_res, other.sam.high_res)
                ],
            ),
        )
        out = model.forward_features(query, changed)["low_res_logits"]
        assert not torch.allclose(out, base), f"shot {shot} had no effect"


def test_gradients_reach_every_trainable_parameter(model):
    model.generator.train()
    try:
        query, support = encode(model, b=2)
        out = model.forward_features(query, support)
        out["logits"].sigmoid().mean().backward()
        missing = [n for n, p in model.generator.named_parameters() if p.grad is None]
        assert not missing
        assert all(p.grad is None for p in model.sam.parameters())
        assert all(p.grad is None for p in model.backbone.parameters())
    finally:
        model.generator.eval()
        model.generator.zero_grad(set_to_none=True)


def test_release_negative_branch_switch_changes_stage2_source(model):
    query, support = encode(model, b=1)
    ours = model.forward_features(query, support)["tokens_neg"]
    model.generator.neg_stage2_source = "support_pos_release"
    try:
        release = model.forward_features(query, support)["tokens_neg"]
    finally:
        model.generator.neg_stage2_source = "query_neg"
    assert not torch.allclose(ours, release)


def sam1_adapter() -> SamAdapter:
    """A SAM 1 prompt encoder and mask decoder with random weights (no image encoder: features are given)."""
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    holder = torch.nn.Module()
    holder.image_encoder = SimpleNamespace(img_size=1024)  # only its input size is read
    holder.prompt_encoder = PromptEncoder(
        embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024), mask_in_chans=16
    )
    holder.mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    return SamAdapter(holder, "sam1")


@pytest.mark.parametrize(
    "family,release,adds_embeddings",
    [("sam1", True, True), ("sam1", False, False), ("sam2", True, False), ("sam2", False, False)],
)
def test_stage2_starts_from_what_the_release_feeds_it(model, monkeypatch, family, release, adds_embeddings):
    """The release's SAM 1 prompt encoder adds the label embeddings to the stage-1 tokens in place, so in
    release mode stage 2 starts from P1 + e; its SAM 2 encoder (and our default mode) leave P1 as it is."""
    monkeypatch.setattr(model.generator, "neg_stage2_source", "support_pos_release" if release else "query_neg")
    seen = {}
    stage1, stage2 = model.generator.stage1, model.generator.stage2

    def spy_stage1(*args):
        seen["stage1"] = stage1(*args)
        return seen["stage1"]

    def spy_stage2(maps, z_pos, z_neg, coarse):
        seen["stage2"] = (z_pos, z_neg)
        return stage2(maps, z_pos, z_neg, coarse)

    monkeypatch.setattr(model.generator, "stage1", spy_stage1)
    monkeypatch.setattr(model.generator, "stage2", spy_stage2)
    query, support = encode(model, b=1)
    sam = model.sam
    if family == "sam1":
        model.sam = sam1_adapter()  # (monkeypatch cannot restore a registered submodule)
    try:
        with torch.no_grad():
            model.forward_features(query, support)
        e_pos, e_neg = (model.sam.positive_embedding, model.sam.negative_embedding) if adds_embeddings else (0, 0)
    finally:
        model.sam = sam
    (p_pos, p_neg), (s_pos, s_neg) = seen["stage1"], seen["stage2"]
    assert torch.allclose(s_pos, p_pos + e_pos) and torch.allclose(s_neg, p_neg + e_neg)
    assert adds_embeddings == (not torch.allclose(s_pos, p_pos))


def test_sam1_batched_decoder_equals_per_sample_upstream():
    torch.manual_seed(0)
    adapter = sam1_adapter()
    holder = adapter.model
    b = 3
    feats = SamFeatures(torch.randn(b, 256, 64, 64))
    # zero tokens plus the positive-point embedding only, and random tokens
    for sparse in (torch.zeros(b, 50, 256) + adapter.positive_embedding, torch.randn(b, 50, 256)):
        with torch.no_grad():
            batched, iou = adapter.decode_tokens(feats, sparse)
            pe, dense = adapter.dense_inputs(b, sparse)
            for i in range(b):
                ref, ref_iou = holder.mask_decoder(
                    image_embeddings=feats.embed[i : i + 1],
                    image_pe=pe,
                    sparse_prompt_embeddings=sparse[i : i + 1],
                    dense_prompt_embeddings=dense[i : i + 1],
                    multimask_output=False,
                )
                assert torch.allclose(batched[i : i + 1], ref, atol=1e-4)
                assert torch.allclose(iou[i : i + 1], ref_iou, atol=1e-5)


def test_features_select_and_cat_round_trip(model):
    query, support = encode(model, b=2)
    for feats, cls in ((query, QueryFeatures), (support, SupportFeatures)):
        parts = [feats.select(slice(i, i + 1)) for i in range(2)]
        assert parts[0].mid.shape[0] == 1 and parts[0].sam.high_res[0].shape[0] == 1
        joined = cls.cat(parts)
        assert torch.equal(joined.mid, feats.mid) and torch.equal(joined.sam.embed, feats.sam.embed)
        assert all(torch.equal(a, b) for a, b in zip(joined.sam.high_res, feats.sam.high_res))
        assert torch.equal(cls.cat(parts[::-1]).mid, feats.mid.flip(0))
