"""The fast catalogue product, row arg-max and dropout give what the plain torch operations give."""

from __future__ import annotations

import pytest
import torch

from seqrec.catalogue import CHUNK, GATHER_ROWS, ROW_ALIGN, gathered_dot, row_argmax, scores
from seqrec.encoders import Dropout


@pytest.mark.parametrize("items", [5, 64, 130, 1001])
@pytest.mark.parametrize("with_bias", [False, True])
def test_scores_equal_the_plain_product(items: int, with_bias: bool) -> None:
    g = torch.Generator().manual_seed(items)
    state, table, bias = torch.randn(7, 16, generator=g), torch.randn(items, 16, generator=g), torch.randn(items)
    got = scores(state, table, bias if with_bias else None)
    want = state @ table.T + (bias if with_bias else 0.0)
    assert got.shape == (7, items)
    assert got.stride(0) % ROW_ALIGN == 0 and got.stride(1) == 1  # the padded layout is really used
    assert torch.allclose(got, want, atol=1e-5)


def test_scores_keep_autograd_when_a_gradient_is_needed() -> None:
    state, table = torch.randn(3, 4, requires_grad=True), torch.randn(9, 4)
    scores(state, table).sum().backward()
    assert torch.allclose(state.grad, table.sum(0).expand(3, 4))


@pytest.mark.parametrize("rows", [1, GATHER_ROWS, GATHER_ROWS + 1, 3 * GATHER_ROWS + 7])
@pytest.mark.parametrize("with_bias", [False, True])
def test_gathered_dot_equals_the_plain_gather(rows: int, with_bias: bool) -> None:
    g = torch.Generator().manual_seed(rows)
    state, table, bias = torch.randn(rows, 16, generator=g), torch.randn(300, 16, generator=g), torch.randn(300)
    ids = torch.randint(0, 300, (rows, 11), generator=g)
    got = gathered_dot(state, table, ids, bias if with_bias else None)
    want = (table[ids] * state.unsqueeze(1)).sum(-1) + (bias[ids] if with_bias else 0.0)
    assert got.shape == (rows, 11)
    assert torch.allclose(got, want, atol=1e-5)


def test_gathered_dot_rows_do_not_depend_on_the_batch() -> None:
    """Exactly equal, not close: a session's scores must not change with how sessions fall into batches."""
    g = torch.Generator().manual_seed(0)
    state, table = torch.randn(3 * GATHER_ROWS + 5, 64, generator=g), torch.randn(500, 64, generator=g)
    ids = torch.randint(0, 500, (state.shape[0], 200), generator=g)
    whole = gathered_dot(state, table, ids)
    for lo, hi in ((0, 1), (5, 8), (GATHER_ROWS - 1, 2 * GATHER_ROWS + 3), (40, state.shape[0])):
        assert torch.equal(gathered_dot(state[lo:hi], table, ids[lo:hi]), whole[lo:hi])


def test_gathered_dot_keeps_autograd() -> None:
    state, table = torch.randn(40, 4, requires_grad=True), torch.randn(9, 4, requires_grad=True)
    ids = torch.zeros(40, 3, dtype=torch.long)
    gathered_dot(state, table, ids).sum().backward()
    assert torch.allclose(state.grad, 3 * table[0].detach().expand(40, 4))
    assert torch.allclose(table.grad[0], 3 * state.detach().sum(0)) and not table.grad[1:].any()


@pytest.mark.parametrize("items", [3, CHUNK, CHUNK + 1, 5 * CHUNK - 1, 1000])
def test_row_argmax_equals_argmax(items: int) -> None:
    x = torch.randn(50, items, generator=torch.Generator().manual_seed(items))
    assert torch.equal(row_argmax(x), x.argmax(dim=1))


def test_row_argmax_takes_the_first_maximum_across_and_within_chunks() -> None:
    x = torch.zeros(4, 3 * CHUNK + 5)
    x[0, [7, CHUNK + 3]] = 2.0        # tie across chunks: the earlier chunk
    x[1, [CHUNK + 9, CHUNK + 1]] = 2.0  # tie inside a chunk: the earlier column
    x[2, -1] = 1.0                    # the maximum in the short last chunk
    x[2, -3] = 1.0                    # ... tied with an earlier column of that chunk
    # row 3 all zeros: column 0
    assert row_argmax(x).tolist() == [7, CHUNK + 1, x.shape[1] - 3, 0]
    assert torch.equal(row_argmax(x), x.argmax(dim=1))


def test_row_argmax_on_the_padded_view_of_scores() -> None:
    g = torch.Generator().manual_seed(1)
    q = scores(torch.randn(32, 8, generator=g), torch.randn(777, 8, generator=g))
    assert q.stride(0) != q.shape[1]  # a strided view
    assert torch.equal(row_argmax(q), q.contiguous().argmax(dim=1))


def test_dropout_rate_scale_and_gradient() -> None:
    torch.manual_seed(0)
    drop = Dropout(0.3).train()
    x = torch.ones(200, 10, 64, requires_grad=True)
    y = drop(x)
    kept = y != 0
    assert kept.float().mean().item() == pytest.approx(0.7, abs=0.01)
    assert torch.allclose(y[kept], torch.tensor(65536 / (65536 - round(0.3 * 65536))))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # d y / d x is the scaled mask
    torch.manual_seed(0)
    assert torch.equal(Dropout(0.3).train()(x), y)  # the global seed fixes the mask
    assert torch.equal(drop.eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
