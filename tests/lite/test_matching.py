"""Matching: k-NN priors over several banks (the merge of each bank's remembered top-k equals matching
their union), and the dense features matched."""

import copy
import gc
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dcsam.io import read_image
from dcsam.lite.backbone import lite_backbone
from dcsam.lite.matching import (
    ROW_BUCKET,
    ROW_DTYPE,
    MatchBank,
    bf16_rows,
    dense_features,
    priors,
    resize_image,
    topk_similarities,
)


def _unit(*shape: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape), dim=-1)


def _reference(query: torch.Tensor, bank: MatchBank, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Priors by brute force over one bank: the mean of the k highest cosine similarities."""
    c, h, w = query.shape
    q = query.reshape(c, -1).T

    def top(rows: torch.Tensor) -> torch.Tensor:
        return (q @ rows.float().T).topk(min(k, rows.shape[0]), dim=1).values.mean(1).reshape(h, w)

    return top(bank.fg), top(bank.bg)


@pytest.mark.parametrize("k", [1, 5])
def test_priors_over_several_banks_equal_priors_over_their_union(k: int) -> None:
    torch.manual_seed(0)
    query = F.normalize(torch.randn(16, 6, 7), dim=0)
    # banks with fewer rows than k, too: the union's top k mixes banks unevenly
    banks = [MatchBank(_unit(n, 16), _unit(m, 16)) for n, m in [(2, 40), (30, 3), (1, 1), (9, 12)]]
    for chosen in ([0], [0, 1], [1, 2, 3], [0, 1, 2, 3]):
        subset = [banks[i] for i in chosen]
        pos, neg = priors(query, subset, "knn", k)
        want_pos, want_neg = _reference(query, MatchBank.concat(subset), k)
        assert torch.allclose(pos, want_pos, atol=1e-6) and torch.allclose(neg, want_neg, atol=1e-6), chosen
    max_pos, _ = priors(query, banks, "max")
    assert torch.allclose(max_pos, _reference(query, MatchBank.concat(banks), 1)[0], atol=1e-6)


def test_a_bank_remembers_each_query_it_matched_while_the_query_lives() -> None:
    torch.manual_seed(1)
    bank = MatchBank(_unit(5, 8), _unit(50, 8))
    query = F.normalize(torch.randn(8, 4, 4), dim=0)
    first = priors(query, [bank])
    assert len(bank.topk_memo) == 2  # its foreground and background rows
    bank.fg.mul_(0)  # a remembered query is not matched again (features are frozen)...
    again = priors(query, [bank])
    assert torch.equal(first[0], again[0])
    other = F.normalize(torch.randn(8, 4, 4), dim=0)
    assert float(priors(other, [bank])[0].abs().max()) == 0.0  # ...a new one is
    del query, other
    gc.collect()
    assert len(bank.topk_memo) == 0  # the memo never keeps a query's rows beyond the query


def test_a_copied_or_pickled_bank_starts_with_an_empty_memo() -> None:
    bank = MatchBank(_unit(3, 8), _unit(6, 8))
    query = F.normalize(torch.randn(8, 2, 2), dim=0)
    priors(query, bank)
    for clone in (copy.deepcopy(bank), pickle.loads(pickle.dumps(bank))):
        assert len(clone.topk_memo) == 0 and torch.equal(clone.fg, bank.fg) and torch.equal(clone.bg, bank.bg)


@pytest.mark.parametrize("bf16", [True, False])
def test_large_banks_pick_in_bfloat16_and_return_float32_values(bf16: bool) -> None:
    """In bfloat16 the k rows are picked in bfloat16 and rescored in float32: every value is the
    float32 cosine of a bank row, and each is within bfloat16's rounding of the exact k-th best."""
    torch.manual_seed(0)
    q, rows = _unit(1100, 64), _unit(1200, 64)  # past the size where the bfloat16 path starts
    got = topk_similarities(q, rows, 5, low_precision=bf16)
    sims = q @ rows.T
    want = sims.topk(5, dim=1).values
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert torch.all(got[:, :-1] >= got[:, 1:])  # in decreasing order
    assert (got - want).abs().max() < 5e-3
    if bf16:  # rescored: each value is an exact cosine of some row, not a bfloat16 one
        exact = (sims[:, :, None] - got[:, None, :]).abs().min(1).values
        assert exact.max() < 1e-6
        assert not torch.equal(got, want)  # near ties were resolved in bfloat16 somewhere
    else:
        assert torch.equal(got, want)


def test_bfloat16_banks_come_in_few_shapes_and_their_padding_is_never_picked() -> None:
    """Bank rows in bfloat16 are padded with zero rows to a multiple of ROW_BUCKET (one kernel per
    shape is kept by oneDNN: a new shape per video frame grew the process without bound). A padding
    row's similarity, 0, beats every real row's here, and still no padding row is returned."""
    torch.manual_seed(0)
    shapes = {bf16_rows(_unit(n, 16)).shape for n in range(1200, 1500, 7)}
    assert shapes <= {(1536, 16), (1024, 16)} and (1536, 16) in shapes
    q = _unit(1100, 16).abs()
    rows = F.normalize(-_unit(1300, 16).abs() - 0.01, dim=1)  # every cosine below 0 against the queries
    padded = bf16_rows(rows)
    assert padded.shape[0] == 3 * ROW_BUCKET and not padded[1300:].any()
    assert torch.equal(padded[:1300], rows.bfloat16())
    got = topk_similarities(q, rows, 5, low_precision=True)
    want = (q @ rows.T).topk(5, dim=1).values
    assert got.max() < 0 and (got - want).abs().max() < 5e-3


@pytest.mark.parametrize("bf16", [True, False])
def test_a_bank_holds_half_precision_rows_and_matches_them_in_float32(bf16: bool) -> None:
    """Banks keep their rows in float16 (half the memory of an example) whatever they are given in;
    matching them gives float32 values, those of the float16 rows in float32 exactly."""
    torch.manual_seed(2)
    fg, bg = _unit(40, 32), _unit(1300, 32)
    bank = MatchBank(fg, bg)
    assert bank.fg.dtype == bank.bg.dtype == ROW_DTYPE == torch.float16
    assert MatchBank.concat([bank, MatchBank(fg[:3], bg[:5])]).bg.dtype == torch.float16
    query = F.normalize(torch.randn(32, 30, 30), dim=0)  # large enough for the bfloat16 path
    q = query.reshape(32, -1).T
    got = topk_similarities(q, bank.bg, 5, low_precision=bf16)
    assert got.dtype == torch.float32
    rounded = q @ bg.half().float().T
    if bf16:  # rescored: every value an exact float32 cosine of a float16 row
        assert (rounded[:, :, None] - got[:, None, :]).abs().min(1).values.max() < 1e-6
    else:
        assert torch.equal(got, rounded.topk(5, dim=1).values)
    pos, neg = priors(query, bank, "prototype")
    assert pos.dtype == neg.dtype == torch.float32
    assert torch.allclose(pos.reshape(-1), q @ F.normalize(fg.half().float().mean(0), dim=0), atol=1e-6)


def test_mirrored_features_are_those_of_the_mirrored_image_mirrored(data_dir) -> None:
    """With ``mirror`` a cell's features average its own view and the mirrored image's, so mirroring
    the image mirrors its features; the backbone alone does not (its features are not symmetric)."""
    backbone = lite_backbone(16, None, False)
    size = (192, 256)  # multiples of 32: the stride-8 grid mirrors onto itself
    image = resize_image(read_image(data_dir / "perseg-mini" / "cat_00.jpg"), size)  # not resized again
    flipped = np.ascontiguousarray(image[:, ::-1])
    args = (size, (2, 4, 6), torch.device("cpu"))
    both = dense_features(backbone, image, *args, mirror=True)
    both_flipped = dense_features(backbone, flipped, *args, mirror=True)
    assert torch.allclose(both_flipped, both.flip(-1), atol=1e-4)
    plain = dense_features(backbone, image, *args)
    plain_flipped = dense_features(backbone, flipped, *args)
    assert (plain_flipped * plain.flip(-1)).sum(0).mean() < 0.95  # unit features: cosine per cell
    assert (both * plain).sum(0).mean() > 0.8  # the mean stays close to each view
