"""Catalogue-wide products (B, D) x (D, I) and row-wise arg-max, laid out for the CPU's BLAS and vector units.

Two measured CPU costs drive this module (2 cores, B = 256, D = 64, I = 26,702; experiments/bench_train.py):
- BLAS writes the (B, I) product about 1.7x faster when the output's row stride is a multiple of 64 floats
  than when it is I itself (12.7 ms -> 7 ms): `padded_scores` writes into a row-padded buffer, `scores`
  returns the (B, I) view of it (row stride a multiple of `ROW_ALIGN`, unit column stride).
- torch.argmax along a row is not vectorised on CPU (5.5 ms against 0.4 ms for amax): `row_argmax` takes
  the vectorised max of 64-wide chunks, then the arg-max of the best chunk only.
- When only the arg-max of a product is needed (the double-Q target), `scores_argmax` computes it in blocks of
  ARGMAX_BLOCK items, table_block @ state.T (items x batch) into a 4 MB buffer that stays in cache, with the
  bias and the chunk maxima taken there: the (B, I) matrix is never written to memory (the products take about
  5 ms instead of 6.9, and the bias pass and the arg-max passes over 27 MB go: 5.5 ms against 9 in a step).
- Scoring a shortlist, (B, K) rows of the table dotted with (B, D) states, is bound by the (B, K, D) gather:
  `gathered_dot` gathers GATHER_ROWS states' rows at a time into a buffer that stays in cache, about 2x faster
  than one gather at B = 1024, K = 200, D = 64 (batch scoring, experiments/bench_score.py), and dots them by
  an in-place multiply and a sum over D, 2.5x faster than a batched (K, D) x (D, 1) product.
All give exactly what the plain operations give (tested in tests/test_catalogue.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ROW_ALIGN = 64  # floats: the output row stride `scores` pads to
CHUNK = 64      # row_argmax: width of the chunks whose maxima are compared first
ARGMAX_BLOCK = 4096  # scores_argmax: items per block ((4096, 256) floats = 4 MB: in L3, 7 blocks at 26,702 items)
GATHER_ROWS = 32  # gathered_dot: states per gather on CPU without autograd (32 x 200 x 64 floats = 1.6 MB)


def padded_scores(state: torch.Tensor, table: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """(B, D) states, (I, D) table, optional (I,) bias -> (B, I') buffer whose first I columns hold
    state @ table.T (+ bias) and whose padding columns (I' - I of them, I' a multiple of ROW_ALIGN) hold
    -inf, so a row softmax over the whole buffer is the softmax over the catalogue (and can run in place).

    Without autograd on CPU only; elsewhere (autograd, autocast, another device) I' = I, the plain product.
    """
    needs_grad = torch.is_grad_enabled() and (state.requires_grad or table.requires_grad
                                              or (bias is not None and bias.requires_grad))
    if needs_grad or state.device.type != "cpu" or torch.is_autocast_enabled("cpu") \
            or state.dtype != table.dtype:
        return state @ table.T if bias is None else torch.addmm(bias, state, table.T)
    b, i = state.shape[0], table.shape[0]
    buf = state.new_empty(b, -(-i // ROW_ALIGN) * ROW_ALIGN)  # (B, I')
    buf[:, i:] = -torch.inf
    out = torch.mm(state, table.T, out=buf[:, :i])  # (B, I) view
    if bias is not None:  # addmm(out=) would first copy the broadcast bias into out, a slow strided pass
        out.add_(bias)
    return buf


def scores(state: torch.Tensor, table: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """(B, D) states, (I, D) table, optional (I,) bias -> (B, I) state @ table.T (+ bias); on CPU without
    autograd a view of `padded_scores`' buffer (row stride a multiple of ROW_ALIGN, unit column stride)."""
    return padded_scores(state, table, bias)[:, :table.shape[0]]


def row_argmax(x: torch.Tensor) -> torch.Tensor:
    """(B, I) -> (B,) index of each row's maximum, the first one on ties (as torch.argmax)."""
    b, i = x.shape
    full = i // CHUNK * CHUNK
    if x.device.type != "cpu" or full == 0 or x.stride(1) != 1:
        return x.argmax(dim=1)
    maxima = [x[:, :full].unflatten(1, (full // CHUNK, CHUNK)).amax(dim=2)]  # (B, I // CHUNK), a view: no copy
    if full < i:
        maxima.append(x[:, full:].amax(dim=1, keepdim=True))  # (B, 1) the short last chunk
    best = torch.cat(maxima, dim=1).argmax(dim=1)  # (B,) first chunk holding the row maximum
    cols = (best.unsqueeze(1) * CHUNK + torch.arange(CHUNK, device=x.device)).clamp_(max=i - 1)  # (B, CHUNK)
    # clamping repeats the last column after the real ones, so the first maximum in the chunk is still first
    return cols.gather(1, x.gather(1, cols).argmax(dim=1, keepdim=True)).squeeze(1)  # (B,)


def scores_argmax(state: torch.Tensor, table: torch.Tensor, bias: torch.Tensor | None = None,
                  block: int = ARGMAX_BLOCK) -> torch.Tensor:
    """(B, D) states, (I, D) table, optional (I,) bias -> (B,) index of each row's maximum of
    state @ table.T (+ bias), the first one on ties and NaN counted as the maximum (as torch.argmax).

    On CPU without autograd the scores are computed `block` items at a time (a multiple of CHUNK), transposed:
    (block, D) x (D, B) into a buffer that stays in cache, bias added there; each block keeps its CHUNK-wide
    maxima (a vectorised reduction across the batch) and, for the block's first best chunk, the arg-max inside
    it. The first best chunk over the whole catalogue then names the block whose inner arg-max is the answer.
    Elsewhere (autograd, another device or dtype, I < CHUNK) it is `row_argmax(scores(...))`.
    """
    needs_grad = torch.is_grad_enabled() and (state.requires_grad or table.requires_grad
                                              or (bias is not None and bias.requires_grad))
    b, i = state.shape[0], table.shape[0]
    if needs_grad or state.device.type != "cpu" or torch.is_autocast_enabled("cpu") or state.dtype != table.dtype \
            or (bias is not None and bias.dtype != table.dtype) or i < CHUNK or block % CHUNK or block <= 0:
        return row_argmax(scores(state, table, bias))
    block = min(block, -(-i // CHUNK) * CHUNK)
    per = block // CHUNK  # chunks per block
    blocks = -(-i // block)
    buf = state.new_empty(block, b)  # (block, B) scores of one block of items, transposed
    chunk_max = state.new_empty(blocks * per, b)  # (chunks, B) each chunk's maximum, per state
    inner = torch.empty(blocks, b, dtype=torch.long, device=state.device)  # (blocks, B) arg-max in best chunk
    cols = torch.arange(b, device=state.device)  # (B,)
    st = state.T  # (D, B)
    for k, lo in enumerate(range(0, i, block)):
        hi = min(lo + block, i)
        n = hi - lo
        m = -(-n // CHUNK) * CHUNK  # rows used, whole chunks; the last block's padding rows hold -inf
        if bias is None:
            torch.mm(table[lo:hi], st, out=buf[:n])  # (n, B)
        else:  # bias copied along the batch (in cache), the product added: fl(dot + bias), as mm then add_
            torch.addmm(bias[lo:hi].unsqueeze(1), table[lo:hi], st, out=buf[:n])  # (n, B)
        if m > n:
            buf[n:m].fill_(-torch.inf)
        chunks = buf[:m].view(m // CHUNK, CHUNK, b)  # (c, CHUNK, B) a view
        cm = torch.amax(chunks, dim=1, out=chunk_max[k * per:k * per + m // CHUNK])  # (c, B)
        best = cm.max(dim=0).indices  # (B,) the block's first chunk holding each state's maximum
        torch.argmax(chunks[best, :, cols], dim=1, out=inner[k])  # (B, CHUNK) that chunk's scores -> (B,)
    # the last block's rows past its last chunk were never written: leave them out
    best = chunk_max[:(blocks - 1) * per + -(-(i - (blocks - 1) * block) // CHUNK)].max(dim=0).indices  # (B,)
    return best * CHUNK + inner.gather(0, (best // per).unsqueeze(0)).squeeze(0)  # (B,)


def gathered_dot(state: torch.Tensor, table: torch.Tensor, ids: torch.Tensor,
                 bias: torch.Tensor | None = None) -> torch.Tensor:
    """(B, D) states, (I, D) table, (B, K) ids, optional (I,) bias -> (B, K): state . table[id] (+ bias[id]).

    On CPU without autograd the rows are gathered GATHER_ROWS states at a time; a row's values never depend on the
    other rows of the batch (scoring relies on it: a session scores the same in any batch)."""
    needs_grad = torch.is_grad_enabled() and (state.requires_grad or table.requires_grad
                                              or (bias is not None and bias.requires_grad))
    if needs_grad or state.device.type != "cpu" or state.dtype != table.dtype:
        out = torch.einsum("bkd,bd->bk", F.embedding(ids, table), state)  # (B, K)
    else:
        # multiply in place and sum the last dim: 2.5x faster than bmm's (K, D) x (D, 1) products per state, and
        # each row's value depends on that row alone (elementwise), whatever the batch
        out = state.new_empty(ids.shape)  # (B, K)
        for lo in range(0, state.shape[0], GATHER_ROWS):
            hi = lo + GATHER_ROWS
            rows = F.embedding(ids[lo:hi], table)  # (b, K, D), in cache
            torch.sum(rows.mul_(state[lo:hi].unsqueeze(1)), dim=2, out=out[lo:hi])
    return out if bias is None else out + bias[ids]
