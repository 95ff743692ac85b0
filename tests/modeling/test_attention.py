import math

import torch

from dcsam.modeling.attention import Attention, PositionEmbeddingSine, cycle_consistency_bias


def identity_attention(dim: int, heads: int) -> Attention:
    attn = Attention(dim, heads)
    with torch.no_grad():
        for lin in (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj):
            lin.weight.copy_(torch.eye(dim))
            lin.bias.zero_()
    return attn


def test_hand_built_cycle_case():
    # 2 tokens, 4 pixels, one head, identity projections: logits = q.k / sqrt(2)
    q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    k = torch.tensor([[[2.0, 0.0], [1.0, 0.5], [0.0, 2.0], [0.5, 1.0]]])
    labels = torch.tensor([[1, 1, 0, 1]])
    logits = (q @ k.transpose(1, 2) / math.sqrt(2)).unsqueeze(1)  # (1, 1, 2, 4)
    # pixel -> best token: p0,p1 -> t0; p2,p3 -> t1. token -> best pixel: t0 -> p0, t1 -> p2.
    # cycles: p0->p0, p1->p0, p2->p2, p3->p2; p3's label (1) differs from p2's (0): dropped.
    bias = cycle_consistency_bias(logits, labels)
    assert bias.shape == (1, 1, 1, 4)
    assert torch.equal(torch.isinf(bias).flatten(), torch.tensor([False, False, False, True]))

    out = identity_attention(2, 1)(q, k, k, labels)
    weights = torch.softmax(logits[0, 0, :, :3], dim=-1)
    assert torch.allclose(out[0], weights @ k[0, :3], atol=1e-6)


def test_constant_labels_equal_plain_attention():
    torch.manual_seed(0)
    attn = Attention(256, 4)
    q, k, v = torch.randn(3, 25, 256), torch.randn(3, 100, 256), torch.randn(3, 100, 256)
    plain = attn(q, k, v)
    for value in (0, 1):
        labels = torch.full((3, 100), value)
        assert torch.allclose(attn(q, k, v, labels), plain, atol=1e-6)
    # and plain attention is ordinary multi-head attention with the same projections
    mha = torch.nn.MultiheadAttention(256, 4, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
        mha.in_proj_bias.copy_(torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]))
        mha.out_proj.weight.copy_(attn.out_proj.weight)
        mha.out_proj.bias.copy_(attn.out_proj.bias)
    ref, _ = mha(q, k, v, need_weights=False)
    assert torch.allclose(plain, ref, atol=1e-5)


def test_labels_are_per_item_not_mixed_across_batch():
    torch.manual_seed(1)
    attn = Attention(64, 4)
    q, k = torch.randn(2, 5, 64), torch.randn(2, 30, 64)
    labels = (torch.rand(2, 30) > 0.5).long()
    batched = attn(q, k, k, labels)
    for b in range(2):
        single = attn(q[b : b + 1], k[b : b + 1], k[b : b + 1], labels[b : b + 1])
        assert torch.allclose(batched[b : b + 1], single, atol=1e-6)


def test_no_nan_under_adversarial_logits():
    torch.manual_seed(2)
    cases = [
        torch.zeros(2, 4, 25, 64),  # all ties
        torch.randn(2, 4, 25, 64) * 1e4,  # saturating softmax
        torch.full((2, 4, 25, 64), -1e30),
        torch.randn(2, 4, 25, 64).to(torch.bfloat16) * 300,
    ]
    for logits in cases:
        for labels in (
            torch.randint(0, 2, (2, 64)),
            torch.zeros(2, 64),
            torch.ones(2, 64),
            torch.arange(64).remainder(2).expand(2, -1),
        ):
            bias = cycle_consistency_bias(logits, labels)
            assert not torch.isinf(bias).all(dim=-1).any(), "a head lost every pixel"
            out = (logits.float() + bias.float()).softmax(-1)
            assert torch.isfinite(out).all()
    attn = Attention(256, 4)
    q = torch.randn(2, 25, 256) * 1e3
    k = torch.randn(2, 64, 256) * 1e3
    assert torch.isfinite(attn(q, k, k, torch.randint(0, 2, (2, 64)))).all()


def test_sine_position_encoding_shape_and_range():
    pe = PositionEmbeddingSine(128)(64, 48, torch.device("cpu"))
    assert pe.shape == (1, 256, 64, 48)
    assert pe.abs().max() <= 1.0
    assert not torch.allclose(pe[..., 0, 0], pe[..., 10, 0])
