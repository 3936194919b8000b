"""`seqrec ope` for an offer learner: its decision policy over (product, nudge) valued on a logged event file
or prepared folder, against the current policy (the logger itself, whose value is the logged mean reward), with
a go / no-go. Only customers the learner never trained on count when it saved its held-out set (offers.json)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from seqrec.datasets.offers import offer_rows
from seqrec.rl.bandits.joint import JointConfig
from seqrec.rl.offers.decide import (
    allowed_pairs,
    bought_before,
    evaluable,
    in_grid,
    logged_bandit,
    offer_probabilities,
    q_values,
)
from seqrec.rl.ope.compare import compare_policies
from seqrec.rl.ope.estimators import OpeConfig
from seqrec.rl.ope.models import CellMeanModel
from seqrec.training.offer_store import load_offers


def offers_folder(spec: str) -> Path | None:
    """The folder of a saved offer learner named by a policy spec (the folder, RUN/offers, or its offers.json)."""
    p = Path(spec)
    for candidate in (p, p / "offers", p.parent if p.name == "offers.json" else None):
        if candidate is not None and (candidate / "offers.json").is_file():
            return candidate
    return None


def offer_gate(table: pa.Table, rewards: dict[str, float], folder: Path, decision: JointConfig,
               estimator: str = "snips", config: OpeConfig | None = None, held_out_only: bool = True) -> dict:
    """The gate's figures: the learner's decision policy against the logger on the log's offers."""
    fitted, mask = load_offers(folder)
    rows = offer_rows(table, fitted.vocab, fitted.config.spec(rewards))
    held = json.loads((folder / "offers.json").read_text()).get("held_out") or []
    restricted = bool(held_out_only and held)
    if restricted:
        keep = np.isin(np.asarray(rows.user).astype(str), np.asarray(held).astype(str))
        if not keep.any():
            raise ValueError(f"{folder}: none of the learner's held-out customers has an offer in this log")
        rows = rows.take(np.flatnonzero(keep))
    p, a = len(fitted.vocab.items), len(fitted.vocab.nudges)
    rows = rows.take(np.flatnonzero(in_grid(rows, p, a)))
    values = q_values(fitted.model, rows.history, rows.profile)                               # (N, P, A)
    allowed = evaluable(rows, allowed_pairs(bought_before(rows.history, p), mask))
    pi = offer_probabilities(values, allowed, decision).reshape(len(rows), -1)
    log = logged_bandit(rows, p, a)
    c = compare_policies(log, pi, None, estimator, config or OpeConfig(), CellMeanModel(by_position=False))
    return {"estimator": c.estimator, "estimate": c.new, "low": c.new_low, "high": c.new_high,
            "decision": "go" if c.difference_low > 0 else "no-go", "level": c.level, "offers": c.n,
            "decides": "product and nudge" if rows.product_chosen else "the nudge of the logged product",
            "held_out_only": restricted,
            "current": {"policy": "logged", "estimate": c.current, "low": c.current_low, "high": c.current_high},
            "difference": {"estimate": c.difference, "low": c.difference_low, "high": c.difference_high}}


def gate_lines(g: dict) -> list[str]:
    """The gate as printed by `seqrec ope`."""
    pct = lambda x: f"{100 * x:.2f}%"   # noqa: E731
    d = g["difference"]
    return [f"offers: {g['offers']:,}" + (" (customers the learner never trained on)" if g["held_out_only"] else "")
            + f"; the policy decides {g['decides']}",
            f"new policy ({g['estimator']}): {pct(g['estimate'])} [{pct(g['low'])}, {pct(g['high'])}]",
            f"current (logged) policy: {pct(g['current']['estimate'])} [{pct(g['current']['low'])}, "
            f"{pct(g['current']['high'])}]",
            f"difference: {100 * d['estimate']:+.2f} points [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}] "
            f"({100 * g['level']:g}% paired bootstrap)",
            f"decision: {g['decision']}"]
