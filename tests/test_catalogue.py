"""The fast catalogue product, row arg-max and dropout give what the plain torch operations give."""

from __future__ import annotations

import pytest
import torch

from seqrec.models.catalogue import CHUNK, GATHER_ROWS, ROW_ALIGN, gathered_dot, row_argmax, scores, scores_argmax
from seqrec.models.encoders import Dropout


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


def _plain_argmax(state: torch.Tensor, table: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The formulation scores_argmax replaces: the whole (B, I) product, then torch.argmax."""
    q = state @ table.T + (bias if bias is not None else 0.0)  # (B, I)
    return q.argmax(dim=1)


@pytest.mark.parametrize("items", [3, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 5, 10 * CHUNK - 1, 2000])
@pytest.mark.parametrize("block", [CHUNK, 2 * CHUNK, 4096])
@pytest.mark.parametrize("with_bias", [False, True])
def test_scores_argmax_equals_the_argmax_of_the_plain_product(items: int, block: int, with_bias: bool) -> None:
    g = torch.Generator().manual_seed(items + block)
    state, table = torch.randn(37, 16, generator=g), torch.randn(items, 16, generator=g)
    bias = torch.randn(items, generator=g) if with_bias else None
    got = scores_argmax(state, table, bias, block=block)
    assert got.dtype == torch.long and got.shape == (37,)
    assert torch.equal(got, _plain_argmax(state, table, bias))
    assert torch.equal(got, row_argmax(scores(state, table, bias)))  # what the learner used before


@pytest.mark.parametrize("block", [CHUNK, 2 * CHUNK, 4096])
def test_scores_argmax_takes_the_first_maximum_within_chunks_blocks_and_the_last_short_chunk(block: int) -> None:
    """Exact ties: duplicate table rows give identical scores, wherever they fall."""
    items = 5 * CHUNK + 7  # 5 whole chunks and a short one; with block = CHUNK, 6 blocks
    g = torch.Generator().manual_seed(3)
    state, table = torch.eye(6, 8), torch.randn(items, 8, generator=g) * 0.01  # state r scores column r
    for r, cols in enumerate([(5, 9),                            # twice in one chunk
                              (CHUNK + 3, 3 * CHUNK + 1),        # in two chunks (two blocks when block = CHUNK)
                              (4 * CHUNK + 2, items - 1),         # in a whole chunk and the short last one
                              (items - 6, items - 2),             # twice in the short last chunk
                              (0, items - 4)]):                   # the first item and a late one
        table[list(cols), r] = 5.0  # state r's maximum, exactly tied between the two items
    state[5] = 0.0  # every score 0 (some -0.0): item 0
    bias = torch.zeros(items)
    got = scores_argmax(state, table, bias, block=block)
    assert got[:5].tolist() == [5, CHUNK + 3, 4 * CHUNK + 2, items - 6, 0]
    assert got[5].item() == 0
    assert torch.equal(got, _plain_argmax(state, table, bias))
    assert torch.equal(scores_argmax(state, table, None, block=block), _plain_argmax(state, table, None))


def test_scores_argmax_ties_from_the_bias_alone_and_nan() -> None:
    """A zero table: the bias decides (first of equal maxima); a NaN counts as the maximum, as in torch.argmax."""
    items = 3 * CHUNK + 10
    state, table = torch.randn(4, 8), torch.zeros(items, 8)
    bias = torch.zeros(items)
    bias[[CHUNK + 1, 2 * CHUNK + 5, items - 1]] = 2.0
    for block in (CHUNK, 2 * CHUNK, 4096):
        assert scores_argmax(state, table, bias, block=block).tolist() == [CHUNK + 1] * 4
    bias[2 * CHUNK + 7] = torch.nan
    bias[items - 2] = torch.nan
    for block in (CHUNK, 2 * CHUNK, 4096):
        got = scores_argmax(state, table, bias, block=block)
        assert got.tolist() == [2 * CHUNK + 7] * 4
        assert torch.equal(got, _plain_argmax(state, table, bias))


def test_scores_argmax_on_a_strided_state_and_under_autograd() -> None:
    """The learner passes encode_all(...)[:, -1] (rows 10 * D apart); with a gradient wanted, the plain path."""
    g = torch.Generator().manual_seed(5)
    states, table, bias = torch.randn(40, 10, 32, generator=g), torch.randn(3000, 32, generator=g), torch.randn(3000)
    state = states[:, -1]
    assert not state.is_contiguous()
    assert torch.equal(scores_argmax(state, table, bias), _plain_argmax(state, table, bias))
    assert torch.equal(scores_argmax(state.requires_grad_(), table, bias), _plain_argmax(state, table, bias))


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
