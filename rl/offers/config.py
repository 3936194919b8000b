"""The offer learner's settings (the `[offers]` table of a run file or an abtest config), torch-free so that a
whole run file can be checked before any model is built."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from seqrec.datasets.offers import OfferSpec

from seqrec.core.config import check_choice, check_int, check_real

HEADS = ("additive", "joint")   # rl/offers/model.py
SELECT = ("snips", "dr", "loss")


@dataclass(frozen=True)
class OfferConfig:
    """The `[offers]` table: how offers are read, the network, and its fitting."""

    history: int = 20
    attribution_hours: float = 168.0
    profile: tuple[str, ...] = ()
    dim: int = 32
    hidden: int = 64
    blocks: int = 1
    heads: int = 1
    dropout: float = 0.1
    head: str = "additive"          # additive | joint (rl/offers/model.py)
    wide: bool = True               # wide terms: a weight per (profile level, product) and (profile level, nudge)
    wide_l2: float = 100.0          # their ridge penalty (in rows) when fitted first, to convergence
    cross: tuple[str, ...] = ()     # profile columns crossed with products and nudges (default: all of profile)
    ensemble: int = 1               # networks fitted with seeds seed, seed + 1, ...; Q from their mean logit
    gamma: float = 0.0              # per-contact discount; 0 = the contextual bandit
    epochs: int = 6
    batch_size: int = 256
    lr: float = 0.003
    weight_decay: float = 0.0
    cql_alpha: float = 0.0          # conservative term's weight; 0 = none (a uniformly exploring log needs none)
    valid_fraction: float = 0.2     # customers held out for selection
    select: str = "snips"           # snips | dr | loss: what picks the epoch
    refit: bool = False             # refit the chosen epochs on every customer (the gate values the fit before it)
    seed: int = 0
    # selection by held-out value beyond the epoch (training/offers.py select_wide, select_decision): other ridge
    # penalties and cross sets of the wide model, other exploration shares of an epsilon-greedy decision layer
    # (the configured wide_l2, cross and epsilon are the defaults kept unless another is worth more beyond chance)
    grid_wide_l2: tuple[float, ...] = ()
    grid_cross: tuple[tuple[str, ...], ...] = ()
    grid_epsilon: tuple[float, ...] = ()
    min_propensity: float = 0.0     # exploration floor: every allowed pair's propensity at least this

    def __post_init__(self) -> None:
        object.__setattr__(self, "profile", tuple(self.profile))
        object.__setattr__(self, "cross", tuple(self.cross))
        object.__setattr__(self, "grid_wide_l2", tuple(self.grid_wide_l2))
        object.__setattr__(self, "grid_epsilon", tuple(self.grid_epsilon))
        if isinstance(self.grid_cross, str) or any(isinstance(c, str) for c in self.grid_cross):
            raise ValueError(f"offers.grid_cross must be a list of lists of profile columns, e.g. "
                             f"[[\"segment\"], [\"segment\", \"job\"]]; got {self.grid_cross!r}")
        object.__setattr__(self, "grid_cross", tuple(tuple(c) for c in self.grid_cross))
        missing = [c for c in self.cross if c not in self.profile]
        if missing:
            raise ValueError(f"offers.cross names {missing}, not in offers.profile {list(self.profile)}")
        check_int("offers.dim", self.dim, 2)
        check_int("offers.hidden", self.hidden, 1)
        check_int("offers.blocks", self.blocks, 0)
        check_int("offers.heads", self.heads, 1)
        check_real("offers.dropout", self.dropout, 0.0, 0.9)
        check_choice("offers.head", self.head, HEADS)
        if not isinstance(self.wide, bool):
            raise ValueError(f"offers.wide must be true or false; got {self.wide!r}")
        if self.dim % self.heads:
            raise ValueError(f"offers.dim ({self.dim}) must be a multiple of offers.heads ({self.heads})")
        check_real("offers.gamma", self.gamma, 0.0, 0.99)
        check_int("offers.ensemble", self.ensemble, 1, 64)
        check_real("offers.wide_l2", self.wide_l2, 0.0, 1e9)
        check_int("offers.epochs", self.epochs, 1)
        check_int("offers.batch_size", self.batch_size, 1)
        check_real("offers.lr", self.lr, 0.0, 10.0, open_low=True)
        check_real("offers.weight_decay", self.weight_decay, 0.0, 10.0)
        check_real("offers.cql_alpha", self.cql_alpha, 0.0, 100.0)
        check_real("offers.valid_fraction", self.valid_fraction, 0.0, 0.9)
        check_choice("offers.select", self.select, SELECT)
        check_int("offers.seed", self.seed, 0)
        self._check_grids()

    def _check_grids(self) -> None:
        """The selection grids: values in range, cross sets of profile columns, only where they can be chosen."""
        for v in self.grid_wide_l2:
            check_real("offers.grid_wide_l2", v, 0.0, 1e9)
        for cross in self.grid_cross:
            missing = [c for c in cross if c not in self.profile]
            if missing or not cross:
                raise ValueError(f"offers.grid_cross: {list(cross)} must be a non-empty list of offers.profile "
                                 f"columns {list(self.profile)}")
        for v in self.grid_epsilon:
            check_real("offers.grid_epsilon", v, 0.0, 1.0)
        check_real("offers.min_propensity", self.min_propensity, 0.0, 1.0)
        for key in ("grid_wide_l2", "grid_cross", "grid_epsilon"):
            if getattr(self, key) and self.valid_fraction == 0:
                raise ValueError(f"offers.{key} needs held-out customers to choose by: set offers.valid_fraction > 0")
        if (self.grid_wide_l2 or self.grid_cross) and not (self.wide and self.head == "additive"):
            raise ValueError("offers.grid_wide_l2 and offers.grid_cross choose the wide model fitted first: they "
                             "need offers.wide = true and offers.head = \"additive\"")
        for key in ("grid_wide_l2", "grid_cross", "grid_epsilon"):
            if getattr(self, key) and self.select == "loss":
                raise ValueError(f"offers.{key} chooses by off-policy value: set offers.select to snips or dr")

    def spec(self, rewards: Mapping[str, float]) -> OfferSpec:
        return OfferSpec(self.history, self.attribution_hours, dict(rewards), self.profile)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}
