"""Catalogue-wide products (B, D) x (D, I) and row-wise arg-max, laid out for the CPU's BLAS and vector units.

Two measured CPU costs drive this module (2 cores, B = 256, D = 64, I = 26,702; experiments/bench_train.py):
- BLAS writes the (B, I) product about 1.7x faster when the output's row stride is a multiple of 64 floats
  than when it is I itself (12.7 ms -> 7 ms): `padded_scores` writes into a row-padded buffer, `scores`
  returns the (B, I) view of it (row stride a multiple of `ROW_ALIGN`, unit column stride).
- torch.argmax along a row is not vectorised on CPU (5.5 ms against 0.4 ms for amax): `row_argmax` takes
  the vectorised max of 64-wide chunks, then the arg-max of the best chunk only.
- torch.topk of 200 among 26,702 costs more than the product itself (about 160 against 130 us a row):
  `padded_topk` first keeps the k best of 64-item groups, then of 8-item groups inside them, and runs topk over
  8k values only (about 2x faster; experiments/bench_score.py).
All give exactly what the plain operations give (tests/test_catalogue.py; padded_topk in tests/test_score.py:
the same values as torch.topk, the same indices but among equal values).
"""

from __future__ import annotations

import torch

ROW_ALIGN = 64  # floats: the output row stride `scores` pads to
CHUNK = 64      # row_argmax: width of the chunks whose maxima are compared first
GROUP = 8       # padded_topk: items per group at each of its two levels (GROUP**2 must divide ROW_ALIGN)


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


def padded_topk(buf: torch.Tensor, n: int, k: int, sorted: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Top k of the first n columns of each row of a row-padded buffer (`padded_scores`': columns from n on are
    -inf): (B, k) values and (B, k) int64 columns, best first when `sorted`. Same values as
    torch.topk(buf[:, :n], k); which of several equal values is kept may differ.

    Why it is exact: the k largest values lie in the k groups with the largest maxima (any group outside them
    has at least k groups at or above its maximum). Groups are strided (group g of a (B, G, C) view holds the
    columns g, g + C, ...), so group maxima are element-wise maxima of G contiguous rows: vectorised.
    """
    b, width = buf.shape
    c1 = width // GROUP  # 8-item groups
    c2 = c1 // GROUP     # 64-item groups
    if (buf.device.type != "cpu" or width % GROUP**2 or not buf.is_contiguous() or c2 < k or k > n
            or torch.is_grad_enabled() and buf.requires_grad):
        return torch.topk(buf[:, :n], k, dim=1, sorted=sorted)
    v1 = buf.view(b, GROUP, c1)  # (B, G, C1): group j's members are v1[:, :, j]
    v2 = v1.amax(1).view(b, GROUP, c2)  # (B, G, C2) maxima of the 8-item groups, grouped again
    g2 = torch.topk(v2.amax(1), k, dim=1, sorted=False).indices  # (B, k) best 64-item groups
    maxima = v2.gather(2, g2.unsqueeze(1).expand(b, GROUP, k)).view(b, GROUP * k)  # (B, Gk) their 8-item groups
    f1 = torch.topk(maxima, k, dim=1, sorted=False).indices  # (B, k)
    g1 = torch.div(f1, k, rounding_mode="floor") * c2 + g2.gather(1, f1 % k)  # (B, k) best 8-item groups
    values = v1.gather(2, g1.unsqueeze(1).expand(b, GROUP, k)).view(b, GROUP * k)  # (B, Gk) their items
    top, f = torch.topk(values, k, dim=1, sorted=sorted)  # (B, k)
    return top, torch.div(f, k, rounding_mode="floor") * c1 + g1.gather(1, f % k)
