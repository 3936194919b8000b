"""Sequence encoders: a window of item ids -> a state vector, scored against item embeddings.

Item ids are vocabulary indices: 0 = padding, 1 = out-of-vocabulary, real items 2..I-1. A state is the
window of the last W items, left-padded with 0, int64 (B, T) with T <= max_len. With `event_types` > 0 every
call also takes the window's (B, T) event codes + 1 (0 at padding), and a position's input row adds its event
type's row (zero at first: the model starts event-blind). Encoding (`encode`,
`encode_all`) is kept apart from scoring (`score`, `score_all`): the supervised head, the Q head and
two-tower retrieval meet at that seam.

Invariants, each tested in tests/test_encoders.py:
- causal: the state after position t never depends on the items after t;
- padding carries nothing: pads are masked out of attention as keys and zeroed after every block, so the
  state after (a, b, c) is the same whatever number of pads precede it and whatever the pad row holds;
- an empty history (an all-padding window, as d3rlpy's shape probe sends) has a finite, learned state
  `empty_state`; `encode_all` gives it at every padded position too, since no item has been seen there.

Positions (SASRec). positions="right" (the default) counts from the newest item: the last column is 0,
the one before it 1, and so on. Left padding then never moves a real item, and the newest item, the one a
serving state ends with, always has the same positional embedding whatever T is. The price: in
`encode_all` the item at column t sits at position T-1-t, so an earlier state there is not exactly the state
`encode` gives for the window that ends at t. positions="left" counts real items from the oldest one in
the window (the first real item is 0); positions then depend only on the prefix and
`encode_all(x)[:, t]` equals `encode` of the left-padded window ending at t, at the cost of the newest item's
position varying with how full the window is.

Weights are tied by default (tied=True), as in SASRec: the input item table (I, D) also scores the output,
so `score_all` is one matmul `state @ E.T`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from seqrec.core.config import check_int
from seqrec.datasets.schema import PAD
from seqrec.models.catalogue import gathered_dot, scores

# PAD: masked everywhere, embedding row kept at zero for lookups; OOV: an ordinary learned row
MAX_NUM_ITEMS = 2**24       # d3rlpy casts observations to float32, exact for integers up to 2**24
ENCODER_KINDS: tuple[str, ...] = ("sasrec", "gru")
POSITION_KINDS: tuple[str, ...] = ("right", "left")


@dataclass(frozen=True)
class EncoderConfig:
    """What one sequence encoder is; `build_encoder` creates it; validated on construction."""

    kind: str = "sasrec"        # "sasrec" (causal self-attention) or "gru" (GRU4Rec, the cheap baseline)
    num_items: int = 0          # catalogue size I, padding and OOV included (must be set, >= 3)
    max_len: int = 10           # T, the state window W: the longest window encode accepts
    dim: int = 64               # D: embedding and state width (GRU4Rec: also the hidden size, 1 layer)
    blocks: int = 1             # SASRec transformer blocks
    heads: int = 1              # SASRec attention heads (dim % heads == 0)
    dropout: float = 0.1        # on embeddings, attention weights and residual branches (GRU: embeddings)
    positions: str = "right"    # SASRec positions: "right" from the newest item, "left" from the oldest
    tied: bool = True           # score with the input item table (SASRec's choice) instead of a second one
    item_init_norm: float = 1.0  # expected L2 norm of an item row at initialisation (N(0, norm^2 / D) entries)
    gru_residual: bool = False  # GRU4Rec: state = GRU output + the item's input embedding (a residual connection)
    categories: int = 0         # K: item category codes 1..K-1 (0: none); an item's row is its own + its category's
    event_types: int = 0        # E: event codes + 1 in 1..E-1 per position (0: off; index 0 = padding); a position's
    # input row is then its item's row + its event type's (`[encoder] events`)

    def __post_init__(self) -> None:
        if self.kind not in ENCODER_KINDS:
            raise ValueError(f"kind must be one of {ENCODER_KINDS}, got {self.kind!r}")
        check_int("num_items", self.num_items, 3, MAX_NUM_ITEMS)
        check_int("max_len", self.max_len, 1)
        check_int("dim", self.dim, 1)
        check_int("blocks", self.blocks, 1)
        check_int("heads", self.heads, 1)
        if self.dim % self.heads:
            raise ValueError(f"heads must divide dim, got dim={self.dim}, heads={self.heads}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) \
                or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        if self.positions not in POSITION_KINDS:
            raise ValueError(f"positions must be one of {POSITION_KINDS}, got {self.positions!r}")
        if not isinstance(self.tied, bool):
            raise ValueError(f"tied must be a bool, got {self.tied!r}")
        if not isinstance(self.gru_residual, bool):
            raise ValueError(f"gru_residual must be a bool, got {self.gru_residual!r}")
        if self.gru_residual and self.kind != "gru":
            raise ValueError(f"gru_residual applies to kind='gru' only (SASRec has residual blocks), got {self.kind!r}")
        if isinstance(self.item_init_norm, bool) or not isinstance(self.item_init_norm, (int, float)) \
                or not 0.0 < self.item_init_norm < float("inf"):
            raise ValueError(f"item_init_norm must be a number > 0, got {self.item_init_norm!r}")
        if isinstance(self.categories, bool):
            raise ValueError("categories = true is resolved to the prepared data's count by seqrec train; "
                             f"an encoder takes a count, got {self.categories!r}")
        check_int("categories", self.categories, 0)
        if isinstance(self.event_types, bool):
            raise ValueError("events = true is resolved to the prepared data's count by seqrec train; "
                             f"an encoder takes a count, got {self.event_types!r}")
        check_int("event_types", self.event_types, 0, 127)  # int8 codes + 1
        if self.event_types == 1:
            raise ValueError("event_types counts the padding row too: 0 (off) or >= 2")



class Dropout(nn.Module):
    """nn.Dropout with a 4x cheaper mask on CPU: four 16-bit uniform draws carved from each int64 one.

    torch's CPU bernoulli_ draws one double per element (about 1 ms for a (256, 10, 64) batch, four times
    a SASRec step); the drop rate is rounded to a multiple of 1/65536 and the survivors scaled to match.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.cut = round(p * 65536)  # a 16-bit draw below cut - 32768 drops its element
        self.scale = 65536 / (65536 - self.cut) if self.cut < 65536 else 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.cut == 0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        n = x.numel()
        bits = torch.randint(-(2**63), 2**63 - 1, (-(-n // 4),), device=x.device).view(torch.int16)  # (>= n,)
        keep = bits[:n].view_as(x) >= self.cut - 32768  # P(keep) = 1 - cut / 65536
        return x.mul(keep).mul_(self.scale)  # = x * (keep * scale) bit for bit, without a float mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


class SequenceEncoder(nn.Module):
    """Base of the encoders: the item table (I, D), padding_idx 0, scoring, and the empty-history state."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.num_items, cfg.dim, padding_idx=PAD)
        self.out_emb = None if cfg.tied else nn.Embedding(cfg.num_items, cfg.dim, padding_idx=PAD)
        for table in (self.item_emb, self.out_emb):
            if table is not None:  # rows of norm about item_init_norm (default 1: initial logits are O(1))
                nn.init.normal_(table.weight, std=cfg.item_init_norm * cfg.dim**-0.5)
                with torch.no_grad():
                    table.weight[PAD].zero_()
        self.empty_state = nn.Parameter(torch.zeros(cfg.dim))  # (D,) the state before any item
        self.emb_dropout = Dropout(cfg.dropout)
        self.cat_emb = None
        if cfg.categories:  # created only with categories: other state dicts and initial draws stay as they were
            self.cat_emb = nn.Embedding(cfg.categories, cfg.dim, padding_idx=0)
            nn.init.zeros_(self.cat_emb.weight)  # start as the id-only model; the category rows learn from all items
            self.register_buffer("item_category", torch.zeros(cfg.num_items, dtype=torch.long))  # (I,) codes
        self.event_emb = None
        if cfg.event_types:  # created only with events: other state dicts and initial draws stay as they were
            self.event_emb = nn.Embedding(cfg.event_types, cfg.dim, padding_idx=0)
            nn.init.zeros_(self.event_emb.weight)  # start as the event-blind model

    def set_item_categories(self, codes: torch.Tensor) -> None:
        """(I,) category code per catalogue index (0: none), from datasets.features.item_category_codes."""
        if self.cat_emb is None:
            raise ValueError("this encoder has no categories (EncoderConfig.categories = 0)")
        if codes.shape != self.item_category.shape or int(codes.max()) >= self.cfg.categories or int(codes.min()) < 0:
            raise ValueError(f"category codes must be ({self.cfg.num_items},) in [0, {self.cfg.categories}), got "
                             f"shape {tuple(codes.shape)}, range [{int(codes.min())}, {int(codes.max())}]")
        self.item_category.copy_(codes)

    def _with_categories(self, table: torch.Tensor) -> torch.Tensor:
        """(I, D) id rows -> (I, D) id rows + their categories' rows (padding's stays 0: code 0 is a zero row)."""
        # index_select, not [ ]: its backward is one index_add, half the time of advanced indexing's index_put
        return table if self.cat_emb is None else table + self.cat_emb.weight.index_select(0, self.item_category)

    @property
    def input_weight(self) -> torch.Tensor:
        """The (I, D) table that embeds items: the id table plus each item's category row (categories)."""
        return self._with_categories(self.item_emb.weight)

    @property
    def output_weight(self) -> torch.Tensor:
        """The (I, D) table that scores items: the input table when tied (with categories: id + category rows)."""
        return self._with_categories(self.item_emb.weight if self.out_emb is None else self.out_emb.weight)

    def item_rows(self, items: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, T, D) their rows of `input_weight` (id + category), without building the whole table."""
        x = self.item_emb(items)
        return x if self.cat_emb is None else x + self.cat_emb(self.item_category[items])

    def embed(self, items: torch.Tensor, events: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) ids (and (B, T) event codes + 1 with event types) -> (B, T, D) input rows (id + category +
        event type), without building the whole table."""
        x = self.item_rows(items)
        return x if self.event_emb is None else x + self.event_emb(events)

    def _ids(self, items: torch.Tensor, events: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Check a (B, T) window (and its (B, T) event codes + 1: needed exactly when the encoder has event types)
        and return them as int64 (d3rlpy hands ids over as float32)."""
        if items.dim() != 2:
            raise ValueError(f"items must be (B, T), got shape {tuple(items.shape)}")
        if items.shape[1] > self.cfg.max_len:
            raise ValueError(f"window length {items.shape[1]} exceeds max_len={self.cfg.max_len}")
        if self.event_emb is None:
            if events is not None:
                raise ValueError("this encoder has no event types (EncoderConfig.event_types = 0): pass no events")
            return items.long(), None  # (B, T)
        if events is None:
            raise ValueError("this encoder has event types: encode needs the window's (B, T) events")
        if events.shape != items.shape:
            raise ValueError(f"events must have the items' shape {tuple(items.shape)}, got {tuple(events.shape)}")
        return items.long(), events.long()  # (B, T) each

    def encode_all(self, items: torch.Tensor, events: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) ids (and (B, T) event codes + 1 with event types) -> (B, T, D): the state after every position,
        for training on every prefix."""
        raise NotImplementedError

    def encode(self, items: torch.Tensor, events: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) ids (and events) -> (B, D): the state after the last position, the one a recommendation starts
        from."""
        return self.encode_all(items, events)[:, -1]  # (B, D)

    def forward(self, items: torch.Tensor, events: torch.Tensor | None = None) -> torch.Tensor:
        """Same as `encode`, so the module plugs in wherever an encoder (B, T) -> (B, D) is expected."""
        return self.encode(items, events)

    def score(self, state: torch.Tensor, item_ids: torch.Tensor) -> torch.Tensor:
        """(B, D) states and (B, K) candidate ids -> (B, K) dot products, to rank a shortlist."""
        return gathered_dot(state, self.output_weight, item_ids)  # (B, K)

    def score_all(self, state: torch.Tensor) -> torch.Tensor:
        """(B, D) states -> (B, I) dot products with the whole catalogue in one matmul (pad and OOV included)."""
        return scores(state, self.output_weight)  # (B, I), a row-padded view when no gradient is needed


class _Block(nn.Module):
    """Pre-norm transformer block: masked multi-head self-attention then a point-wise feed-forward."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.norm_attn = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), Dropout(dropout), nn.Linear(dim, dim))
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """(B, T, D) and (B, T, T) mask of keys each query may see -> (B, T, D)."""
        b, t, d = x.shape
        qkv = self.qkv(self.norm_attn(x)).view(b, t, 3, self.heads, d // self.heads)  # (B, T, 3, H, D/H)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, T, D/H)
        p = self.dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed.unsqueeze(1), dropout_p=p)  # (B, H, T, D/H)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, t, d)))  # (B, T, D)
        return x + self.drop(self.ff(self.norm_ff(x)))  # (B, T, D)

    def last(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """`forward(x, allowed)[:, -1:]` computed for the last query only: keys and values of every position,
        but the query, projection and feed-forward of one row (B, 1, D). The state a recommendation starts
        from, and the one a training transition learns from, need no more: about half the block's work.
        In training mode it draws its own dropout masks (for one row instead of T)."""
        b, t, d = x.shape
        h = self.norm_attn(x)  # (B, T, D)
        w, bias = self.qkv.weight, self.qkv.bias  # (3D, D), (3D,) rows: query, key, value
        kv = F.linear(h, w[d:], bias[d:]).view(b, t, 2, self.heads, d // self.heads)  # (B, T, 2, H, D/H)
        k, v = kv.permute(2, 0, 3, 1, 4)  # each (B, H, T, D/H)
        q = F.linear(h[:, -1:], w[:d], bias[:d]).view(b, 1, self.heads, d // self.heads).transpose(1, 2)
        p = self.dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, -1:].unsqueeze(1), dropout_p=p)
        y = x[:, -1:] + self.drop(self.proj(a.transpose(1, 2).reshape(b, 1, d)))  # (B, 1, D); a: (B, H, 1, D/H)
        return y + self.drop(self.ff(self.norm_ff(y)))  # (B, 1, D)


class SASRec(SequenceEncoder):
    """Causal self-attention over the window (Kang & McAuley 2018), with learned positional embeddings."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__(cfg)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.dim)
        nn.init.normal_(self.pos_emb.weight, std=cfg.dim**-0.5)
        self.blocks = nn.ModuleList(_Block(cfg.dim, cfg.heads, cfg.dropout) for _ in range(cfg.blocks))
        self.final_norm = nn.LayerNorm(cfg.dim)
        # states of norm about sqrt(D) / item_init_norm: initial logits keep their scale whatever the row norm
        nn.init.constant_(self.final_norm.weight, 1.0 / cfg.item_init_norm)

    def _positions(self, keep: torch.Tensor) -> torch.Tensor:
        """Position index of every column, (T,) or (B, T); see the module docstring for the two choices."""
        if self.cfg.positions == "right":
            return torch.arange(keep.shape[1] - 1, -1, -1, device=keep.device)  # (T,) newest = 0
        return (keep.long().cumsum(1) - 1).clamp(min=0)  # (B, T) oldest real item = 0

    def _embed(self, items: torch.Tensor,
               events: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T) ids (and events) -> input (B, T, D), keep mask (B, T, 1) of real items, allowed keys (B, T, T)."""
        t = items.shape[1]
        keep = (items != PAD).unsqueeze(-1)  # (B, T, 1)
        x = self.embed(items, events) + self.pos_emb(self._positions(keep.squeeze(-1)))  # (B, T, D)
        x = self.emb_dropout(x) * keep  # (B, T, D) pads carry nothing
        causal = torch.ones(t, t, dtype=torch.bool, device=items.device).tril()  # (T, T) key <= query
        eye = torch.eye(t, dtype=torch.bool, device=items.device)  # (T, T)
        # A query sees earlier real items, and always itself: no row is fully masked, so no NaN.
        return x, keep, (causal & keep.transpose(1, 2)) | eye

    def encode_all(self, items: torch.Tensor, events: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) ids (and events) -> (B, T, D) causal states; padded positions get `empty_state`."""
        x, keep, allowed = self._embed(*self._ids(items, events))
        for block in self.blocks:
            x = block(x, allowed) * keep  # (B, T, D)
        x = self.final_norm(x)  # (B, T, D)
        return torch.where(keep, x, self.empty_state)  # (B, T, D)

    def encode(self, items: torch.Tensor, events: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) ids (and events) -> (B, D) state after the last position; the last block runs for that position
        only (`_Block.last`): in eval mode the same values as `encode_all(items)[:, -1]` up to rounding, in
        training mode the same distribution (its dropout masks are drawn for one row)."""
        x, keep, allowed = self._embed(*self._ids(items, events))
        for block in self.blocks[:-1]:
            x = block(x, allowed) * keep  # (B, T, D)
        x = self.final_norm(self.blocks[-1].last(x, allowed))[:, 0]  # (B, D)
        return torch.where(keep[:, -1], x, self.empty_state)  # (B, D)


class GRU4Rec(SequenceEncoder):
    """Item embedding -> one GRU layer -> hidden state after each item (Hidasi et al. 2016): the baseline."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__(cfg)
        self.gru = nn.GRU(cfg.dim, cfg.dim, batch_first=True)

    def encode_all(self, items: torch.Tensor, events: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) ids (and events) -> (B, T, D) hidden states; padded positions get `empty_state`.

        A GRU's biases would change its state on pad inputs, so the real items are first moved to the front
        (a stable sort, order kept), run through the GRU, and the outputs moved back to their columns.
        """
        items, events = self._ids(items, events)  # (B, T) each
        keep = items != PAD  # (B, T)
        order = torch.sort(keep.to(torch.uint8), dim=1, descending=True, stable=True).indices  # (B, T)
        front = items.gather(1, order)  # (B, T) real items first, pads after
        front_events = None if events is None else events.gather(1, order)  # (B, T) their event types alike
        x = self.emb_dropout(self.embed(front, front_events)) * (front != PAD).unsqueeze(-1)  # (B, T, D)
        h, _ = self.gru(x)  # (B, T, D) outputs at trailing pads are never used
        if self.cfg.gru_residual:
            h = h + x  # (B, T, D) the item itself reaches the state (and so its own score) unrotated
        back = order.argsort(dim=1)  # (B, T) inverse permutation
        h = h.gather(1, back.unsqueeze(-1).expand_as(h))  # (B, T, D)
        return torch.where(keep.unsqueeze(-1), h, self.empty_state)  # (B, T, D)


def build_encoder(cfg: EncoderConfig) -> SequenceEncoder:
    """Create the encoder `cfg` describes."""
    if cfg.kind == "sasrec":
        return SASRec(cfg)
    if cfg.kind == "gru":
        return GRU4Rec(cfg)
    raise ValueError(f"kind must be one of {ENCODER_KINDS}, got {cfg.kind!r}")
