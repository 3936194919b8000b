"""The offer-level Q network: the value of offering product p with nudge a to a customer, from the encoder's
state of everything the customer did before (event-typed, nudges seen) and their profile.

Q(s, p, a) = scale * sigmoid(f(s, p, a)), scale = the largest reward / (1 - gamma): bounded like the return it
estimates, and with gamma 0 and a 0/1 reward exactly a purchase-probability model (fitted by cross-entropy).
f is (head "joint") an MLP over the state h (B, D), the product and nudge embeddings, their products with h
and with each other, an attention read of the history by the product (what the customer did with it), and
log-counts of the history's events on that product by type and offered/not (a browse apart from an unbought
offer) and of earlier showings of the same nudge and of its family (wear-off). With head "additive" (the
default) the product's and the nudge's inputs go through their own MLPs and f is the sum of the two plus a
learnt bias per (product, nudge) pair: the response is additive on the logit scale in what is offered and how
it is presented (each effect still depends on the whole state), which needs far fewer rows than a free
three-way interaction. With `wide`, f also has a weight per (profile level, product) and (profile level, nudge).
Shapes: B customers, W history, D width, K candidate (product, nudge) pairs, P products, A nudges, C profile
columns.
"""

from __future__ import annotations

import torch
from seqrec.rl.offers.config import OfferConfig
from torch import nn


class OfferQNet(nn.Module):
    """Q(s, p, a) for candidate (product, nudge) pairs (see the module docstring)."""

    def __init__(self, n_items: int, n_events: int, n_nudges: int, profile_sizes: tuple[int, ...], window: int,
                 cfg: OfferConfig, nudge_family: torch.Tensor | None = None, scale: float = 1.0,
                 cross: tuple[int, ...] | None = None) -> None:
        super().__init__()
        d = cfg.dim
        self.cfg, self.window, self.scale, self.n_events = cfg, window, float(scale), n_events
        self.item = nn.Embedding(n_items, d, padding_idx=0)
        self.event = nn.Embedding(n_events, d, padding_idx=0)
        self.nudge = nn.Embedding(n_nudges, d, padding_idx=0)
        self.position = nn.Embedding(window, d)
        self.profile = nn.ModuleList(nn.Embedding(n + 1, d) for n in profile_sizes)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(d, cfg.heads, 2 * d, cfg.dropout, batch_first=True, norm_first=True)
            for _ in range(cfg.blocks))
        self.state = nn.Sequential(nn.Linear(3 * d, d), nn.GELU(), nn.LayerNorm(d))
        family = torch.arange(n_nudges) if nudge_family is None else torch.as_tensor(nudge_family, dtype=torch.long)
        self.register_buffer("family", family, persistent=True)                 # (A',) family code of each nudge
        # the scoring MLP's first layer, split by what each input depends on (the same map as one Linear over
        # their concatenation): the (state, product) part, the (state, nudge) part and the (product, nudge) part
        self.by_product = nn.Linear(4 * d + 2 * n_events, cfg.hidden)          # h, e, h*e, read, counts
        self.by_nudge = nn.Linear(2 * d + 2, cfg.hidden, bias=False)            # g, h*g, shown counts
        if cfg.head == "joint":
            self.by_pair = nn.Linear(d, cfg.hidden, bias=False)                 # e*g
        self.score = nn.Sequential(nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, cfg.hidden), nn.GELU(),
                                   nn.Linear(cfg.hidden, 1))
        if cfg.head == "additive":   # the product's and the nudge's parts each to a logit; a bias per pair
            self.score_nudge = nn.Sequential(nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, 1))
            self.pair_bias = nn.Embedding(n_items * n_nudges, 1)
            nn.init.zeros_(self.pair_bias.weight)
        # wide terms: a scalar per (profile level, product) and per (profile level, nudge), as a logistic model's
        # segment x product and segment x nudge terms: the interactions the data pins down best, learnt directly
        self.n_items, self.n_nudges = n_items, n_nudges
        # (cross: the profile columns crossed with products and nudges; default all)
        self.cross = tuple(range(len(profile_sizes))) if cross is None else tuple(cross)
        sizes = [profile_sizes[c] for c in self.cross] if cfg.wide else []
        self.wide_product = nn.ModuleList(nn.Embedding((n + 1) * n_items, 1) for n in sizes)
        self.wide_nudge = nn.ModuleList(nn.Embedding((n + 1) * n_nudges, 1) for n in sizes)
        # the profile's main effects: who buys anything (a base rate no decision changes), so that the crosses
        # above carry only how offers differ for the customer
        self.wide_main = nn.ModuleList(nn.Embedding(n + 1, 1) for n in profile_sizes) if cfg.wide else nn.ModuleList()
        self.wide_history = nn.Linear(2 * n_events, 1, bias=False)   # what the customer did with the product
        self.wide_shown = nn.Linear(2, 1, bias=False)                  # earlier showings of the nudge, its family
        for w in (*(e.weight for e in (*self.wide_product, *self.wide_nudge, *self.wide_main)),
                  self.wide_history.weight, self.wide_shown.weight):
            nn.init.zeros_(w)
        if cfg.wide and cfg.head == "additive":   # the deep parts start at 0: the network starts as its wide model
            for last in (self.score[-1], self.score_nudge[-1]):
                nn.init.zeros_(last.weight)
                nn.init.zeros_(last.bias)

    def wide_parameters(self) -> list[nn.Parameter]:
        """The wide model's parameters, a logistic model fitted first: the penalised ones (crosses, history and
        showing weights) and the unpenalised ones (main effects of the profile, biases per pair)."""
        return self.wide_penalised() + [e.weight for e in self.wide_main] + (
            [self.pair_bias.weight] if self.cfg.head == "additive" else [])

    def wide_penalised(self) -> list[nn.Parameter]:
        return [*(e.weight for e in (*self.wide_product, *self.wide_nudge)), self.wide_history.weight,
                self.wide_shown.weight]

    def encode(self, history: torch.Tensor, profile: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D) state and (B, W, D) token memory of histories (B, W, 3) and profiles (B, C)."""
        item, etype, nudge = history.unbind(-1)                                  # (B, W) each
        keep = item > 0                                                          # (B, W)
        x = self.item(item) + self.event(etype) + self.nudge(nudge) + self.position.weight[None]
        x = x * keep[..., None]
        empty = ~keep.any(dim=1)                                                 # (B,) no history at all
        pad = ~keep & ~empty[:, None]                                            # attention mask (all-pad rows: none)
        for block in self.blocks:
            x = block(x, src_key_padding_mask=pad) * keep[..., None]
        mean = x.sum(1) / keep.sum(1, keepdim=True).clamp(min=1)                 # (B, D)
        last = x[:, -1]                                                          # newest event (zeros if none)
        prof = sum((emb(profile[:, c]) for c, emb in enumerate(self.profile)),
                   torch.zeros_like(mean))                                       # (B, D)
        return self.state(torch.cat([mean, last, prof], dim=1)), x

    def logits(self, history: torch.Tensor, profile: torch.Tensor, items: torch.Tensor,
               nudges: torch.Tensor) -> torch.Tensor:
        """(B, K) logit of each candidate pair: items, nudges (B, K) codes."""
        h, memory = self.encode(history, profile)
        prod, nud = self.product_part(h, memory, history, items), self.nudge_part(h, history, nudges)
        wide = self.wide(profile, history, items, nudges)                        # (B, K)
        if self.cfg.head == "additive":
            pair = self.pair_bias(items * self.n_nudges + nudges).squeeze(-1)
            return self.score(prod).squeeze(-1) + self.score_nudge(nud).squeeze(-1) + pair + wide   # (B, K)
        z = prod + nud + self.by_pair(self.item(items) * self.nudge(nudges))
        return self.score(z).squeeze(-1) + wide                                 # (B, K)

    def wide(self, profile: torch.Tensor, history: torch.Tensor, items: torch.Tensor,
             nudges: torch.Tensor) -> torch.Tensor:
        """(B, K) the wide terms of pairs items, nudges (B, K) (0 without them)."""
        return self.wide_products(profile, history, items) + self.wide_nudges(profile, history, nudges)

    def wide_products(self, profile: torch.Tensor, history: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """(B, K) wide terms of products items (B, K): profile level x product weights and a linear read of the
        customer's events on the product (by type, offered or not)."""
        if not self.cfg.wide:
            return torch.zeros(items.shape)
        out = self.wide_history(torch.log1p(self.product_counts(history, items))).squeeze(-1)
        for c, emb in zip(self.cross, self.wide_product):
            out = out + emb(profile[:, c:c + 1] * self.n_items + items).squeeze(-1)
        for c, emb in enumerate(self.wide_main):        # the main effects once per pair: with the product's part
            out = out + emb(profile[:, c:c + 1]).squeeze(-1)
        return out

    def wide_nudges(self, profile: torch.Tensor, history: torch.Tensor, nudges: torch.Tensor) -> torch.Tensor:
        """(B, K) wide terms of nudges (B, K): profile level x nudge weights and earlier showings (wear-off)."""
        if not self.cfg.wide:
            return torch.zeros(nudges.shape)
        out = self.wide_shown(self.shown_counts(history, nudges)).squeeze(-1)
        for c, emb in zip(self.cross, self.wide_nudge):
            out = out + emb(profile[:, c:c + 1] * self.n_nudges + nudges).squeeze(-1)
        return out

    def product_counts(self, history: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """(B, K, 2 E) the customer's events on each product by event type and offered (1) or not (0)."""
        b, k = items.shape
        hist_item, hist_event, hist_nudge = history.unbind(-1)                   # (B, W) each
        same = (hist_item[:, None, :] == items[:, :, None]) & (hist_item > 0)[:, None]   # (B, K, W)
        kind = hist_event * 2 + (hist_nudge > 0).long()                          # (B, W)
        counts = torch.zeros(b, k, 2 * self.n_events)
        counts.scatter_add_(2, kind[:, None, :].expand(b, k, -1), same.float())
        return counts

    def shown_counts(self, history: torch.Tensor, nudges: torch.Tensor) -> torch.Tensor:
        """(B, K, 2) log(1 + earlier showings) of each nudge and of its family."""
        hist_nudge = history[..., 2]                                             # (B, W)
        shown = (hist_nudge > 0)[:, None, :]                                     # (B, 1, W)
        same = ((hist_nudge[:, None, :] == nudges[:, :, None]) & shown).sum(-1)  # (B, K)
        fam = ((self.family[hist_nudge][:, None, :] == self.family[nudges][:, :, None]) & shown).sum(-1)
        return torch.log1p(torch.stack([same, fam], dim=2).float())

    def product_part(self, h: torch.Tensor, memory: torch.Tensor, history: torch.Tensor,
                     items: torch.Tensor) -> torch.Tensor:
        """(B, K, H) first-layer input of the (state, product) features of products items (B, K)."""
        b, k = items.shape
        d = h.shape[1]
        e = self.item(items)                                                     # (B, K, D)
        keep = history[..., 0] > 0                                               # (B, W)
        att = (e @ memory.transpose(1, 2)) / d ** 0.5                            # (B, K, W)
        w = torch.softmax(att.masked_fill(~keep[:, None], -1e4), dim=-1) * keep[:, None]   # none where no history
        read = w @ memory                                                        # (B, K, D)
        counts = self.product_counts(history, items)                             # (B, K, 2 E)
        hk = h[:, None].expand(b, k, d)
        return self.by_product(torch.cat([hk, e, hk * e, read, torch.log1p(counts)], dim=2))

    def nudge_part(self, h: torch.Tensor, history: torch.Tensor, nudges: torch.Tensor) -> torch.Tensor:
        """(B, K, H) first-layer input of the (state, nudge) features of nudges (B, K): earlier showings of the
        same nudge and of its family (wear-off)."""
        b, k = nudges.shape
        g = self.nudge(nudges)                                                   # (B, K, D)
        hk = h[:, None].expand(b, k, -1)
        return self.by_nudge(torch.cat([g, hk * g, self.shown_counts(history, nudges)], dim=2))

    def values(self, logits: torch.Tensor) -> torch.Tensor:
        """Q values of logits: scale * sigmoid."""
        return self.scale * torch.sigmoid(logits)

    def all_logits(self, history: torch.Tensor, profile: torch.Tensor, items: torch.Tensor,
                   nudges: torch.Tensor) -> torch.Tensor:
        """(B, P, A) logits of every pair of products items (P,) and nudges (A,): the first layer's parts are
        computed per product and per nudge and broadcast, not per pair."""
        b = history.shape[0]
        h, memory = self.encode(history, profile)
        prod = self.product_part(h, memory, history, items[None].expand(b, -1))      # (B, P, H)
        nud = self.nudge_part(h, history, nudges[None].expand(b, -1))                 # (B, A, H)
        wide = (self.wide_products(profile, history, items[None].expand(b, -1))[:, :, None]
                + self.wide_nudges(profile, history, nudges[None].expand(b, -1))[:, None])   # (B, P, A)
        if self.cfg.head == "additive":
            pair = self.pair_bias(items[:, None] * self.n_nudges + nudges[None]).squeeze(-1)   # (P, A)
            return (self.score(prod).squeeze(-1)[:, :, None] + self.score_nudge(nud).squeeze(-1)[:, None]
                    + pair[None] + wide)
        pair = self.by_pair(self.item(items)[:, None] * self.nudge(nudges)[None])     # (P, A, H)
        return self.score(prod[:, :, None] + nud[:, None] + pair[None]).squeeze(-1) + wide


class OfferEnsemble(nn.Module):
    """The mean logit of several offer Q networks fitted with different seeds: each member's decisions carry the
    noise of its own fit, and the mean's ranking of offers is steadier than any one's."""

    def __init__(self, members: list[OfferQNet]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.scale, self.n_items, self.n_nudges = members[0].scale, members[0].n_items, members[0].n_nudges

    def logits(self, history: torch.Tensor, profile: torch.Tensor, items: torch.Tensor,
               nudges: torch.Tensor) -> torch.Tensor:
        return torch.stack([m.logits(history, profile, items, nudges) for m in self.members]).mean(0)

    def all_logits(self, history: torch.Tensor, profile: torch.Tensor, items: torch.Tensor,
                   nudges: torch.Tensor) -> torch.Tensor:
        return torch.stack([m.all_logits(history, profile, items, nudges) for m in self.members]).mean(0)

    def values(self, logits: torch.Tensor) -> torch.Tensor:
        return self.scale * torch.sigmoid(logits)
