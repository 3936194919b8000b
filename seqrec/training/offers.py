"""Fitting the offer-level Q learner (rl/offers): fitted Q at the contact level, chosen by off-policy value.

The action is the logged offer (product, nudge); the target is the attributed reward plus, for gamma > 0, the
discounted best allowed Q of the customer's next offer under the previous epoch's network (fitted Q iteration:
one regression per epoch, the targets frozen during it; gamma 0 is the contextual bandit). The loss is the
cross-entropy of Q / scale against target / scale (a purchase model when gamma = 0 and rewards are 0/1), plus
an optional conservative term (CQL: logsumexp of the allowed pairs' logits minus the logged pair's) for logs
whose logger rarely explored. Logged propensities are used where they are unbiased and cheap: in selection,
where each epoch's greedy policy is valued by SNIPS (or DR) on the held-out customers' offers; the regression
itself is unweighted (Q(s, a) is conditional on the action, so the logger's choice does not bias it, and
importance weights would only add variance). With `refit`, the chosen number of epochs is then refit on every
customer. Shapes: N offers, W history, P products, A nudges.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F

from seqrec.datasets.offers import FIRST_NUDGE, OfferRows, OfferVocab
from seqrec.datasets.schema import FIRST_ITEM
from seqrec.rl.bandits.joint import JointConfig
from seqrec.rl.offers.config import OfferConfig
from seqrec.rl.offers.decide import (
    allowed_pairs,
    bought_before,
    evaluable,
    grid,
    in_grid,
    logged_bandit,
    policy_value,
    q_values,
)
from seqrec.rl.offers.model import OfferEnsemble, OfferQNet
from seqrec.rl.offers.select import choose_candidate, compare_candidates, one_hot, select_epsilon
from seqrec.rl.ope.compare import compare_policies
from seqrec.rl.ope.data import LoggedBandit
from seqrec.rl.ope.estimators import OpeConfig
from seqrec.rl.ope.models import Predictions
from seqrec.training.loop import Evaluation, Schedule, fit
from seqrec.training.offer_store import FittedOffers, offer_network

SELECT_RESAMPLES = 200   # bootstrap resamples of the paired comparison that may pick an earlier epoch


def split_customers(rows: OfferRows, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, valid rows): a seeded `fraction` of the customers, all their offers, held out."""
    users, inverse = np.unique(np.asarray(rows.user).astype(str), return_inverse=True)
    held = np.random.default_rng(seed).random(len(users)) < fraction
    return np.flatnonzero(~held[inverse]), np.flatnonzero(held[inverse])


def contact_targets(rows: OfferRows, q_next, gamma: float, nudge_mask: np.ndarray) -> np.ndarray:
    """(N,) fitted-Q targets at the contact level: reward + gamma * max over the pairs allowed at the customer's
    next offer (products not bought by then, nudges allowed with the product) of q_next(history, profile)
    (n, P, A); the reward alone for a customer's last offer or gamma 0."""
    y = rows.reward.astype(np.float64).copy()
    nxt = np.flatnonzero(rows.next_row >= 0)
    if gamma > 0 and len(nxt):
        nr = rows.next_row[nxt]
        q = q_next(rows.history[nr], rows.profile[nr])                                      # (n, P, A)
        ok = allowed_pairs(bought_before(rows.history[nr], len(nudge_mask)), nudge_mask)
        y[nxt] += gamma * np.where(ok, q, -np.inf).max(axis=(1, 2))
    return y


def fit_offer_q(rows: OfferRows, vocab: OfferVocab, cfg: OfferConfig, nudge_mask: np.ndarray | None = None,
                nudge_family: np.ndarray | None = None, max_reward: float = 1.0,
                decision: JointConfig | None = None) -> FittedOffers:
    """Fit the offer Q network on logged offers (module docstring). nudge_mask (P, A): nudges allowed with each
    product (default all); nudge_family (A,): family index of each nudge (default: each its own). With the
    grids of cfg, the wide model's settings are chosen first and, given `decision`, its exploration share last,
    each by held-out value (`select_wide`, `select_epsilon`); what was compared lands in info["selection"]."""
    p, a = len(vocab.items), len(vocab.nudges)
    mask = np.ones((p, a), bool) if nudge_mask is None else np.asarray(nudge_mask, bool)
    scale = max_reward / (1.0 - cfg.gamma)
    train_rows, valid_rows = split_customers(rows, cfg.valid_fraction, cfg.seed)
    if cfg.valid_fraction > 0 and (not len(valid_rows) or not len(train_rows)):
        raise ValueError(f"offers.valid_fraction = {cfg.valid_fraction} leaves no training or no validation "
                         f"customers among {len(np.unique(np.asarray(rows.user).astype(str)))}")

    def build() -> OfferQNet:
        return offer_network(vocab, cfg, nudge_family, scale)

    greedy = JointConfig(kind="greedy", epsilon=0.0)
    valid = rows.take(valid_rows) if len(valid_rows) else None
    valid_allowed = (evaluable(valid, allowed_pairs(bought_before(valid.history, p), mask)) if valid is not None
                     else None)
    seen: list[tuple[dict, dict, np.ndarray]] = []      # per epoch: metrics, weights, greedy action per valid row
    selection: dict = {}
    if valid is not None and (cfg.grid_wide_l2 or cfg.grid_cross):
        cfg, selection["wide"] = select_wide(rows.take(train_rows), valid, valid_allowed, vocab, cfg, nudge_family,
                                             mask, scale)

    def evaluate(model: OfferQNet | OfferEnsemble) -> Evaluation:
        q = q_values(model, valid.history, valid.profile)                       # (N, P, A)
        logits = torch.logit(torch.from_numpy(q / scale).clamp(1e-6, 1 - 1e-6))
        taken = logits[torch.arange(len(valid)), torch.from_numpy(valid.item - FIRST_ITEM),
                       torch.from_numpy(valid.nudge - FIRST_NUDGE)]
        loss = float(F.binary_cross_entropy_with_logits(taken, torch.from_numpy(valid.reward / scale)))
        snips = policy_value(valid, q, valid_allowed, greedy, "snips").value
        dr = policy_value(valid, q, valid_allowed, greedy, "dr").value
        metrics = {"snips": snips, "dr": dr, "loss": loss, "mean_q": float(q[valid_allowed].mean())}
        action = np.argmax(np.where(valid_allowed, q, -np.inf).reshape(len(valid), -1), axis=1)
        seen.append((metrics, {k: v.clone() for k, v in model.state_dict().items()}, action))
        chosen = {"snips": snips, "dr": dr, "loss": -loss}[cfg.select]
        return Evaluation(metrics, None if math.isnan(chosen) else chosen,
                          {f"offers/valid_{k}": v for k, v in metrics.items()})

    members, infos, selected = [], [], []         # selected: the members before a refit, for the gate
    for k in range(cfg.ensemble):                  # each member its own seed of initialisation and order
        member_cfg = dataclasses.replace(cfg, seed=cfg.seed + k)
        seen.clear()
        model, result = _train(build, rows.take(train_rows) if valid is not None else rows, member_cfg, mask,
                               scale, cfg.epochs, evaluate if valid is not None else None)
        info = {"train_offers": int(len(train_rows)), "valid_offers": int(len(valid_rows)), "select": cfg.select,
                "epochs": result["step"], "refit": False}
        if valid is not None:
            values = np.array([m[cfg.select] if cfg.select != "loss" else np.nan for m, _, _ in seen])
            losses = np.array([m["loss"] for m, _, _ in seen])
            log = logged_bandit(valid, p, a)
            chosen = choose_epoch(log, [act for _, _, act in seen], values, losses, cfg.select,
                                  OpeConfig(resamples=SELECT_RESAMPLES, seed=cfg.seed),
                                  0 if wide_first(cfg) else None)
            model.load_state_dict(seen[chosen][1])
            first = 0 if wide_first(cfg) else 1           # per_epoch[0] is the wide model alone when fitted first
            info.update(best_epoch=chosen + first, valid=seen[chosen][0], per_epoch=[m for m, _, _ in seen])
            if cfg.refit:
                selected.append(model.eval())
                model, _ = _train(build, rows, member_cfg, mask, scale, chosen + first, None)
                info["refit"] = True
        members.append(model.eval())
        infos.append(info)
    info = dict(infos[0])
    net: OfferQNet | OfferEnsemble = members[0]
    if cfg.ensemble > 1:
        net = OfferEnsemble(members).eval()
        info["members"] = infos
        if valid is not None:   # the ensemble's own held-out figures
            info["valid"] = evaluate(net).metrics
    held_out = np.unique(np.asarray(rows.user)[valid_rows]) if valid is not None else np.zeros(0)
    gate_model = None
    if selected:   # refit on every customer: the gate values the network fitted without the held-out ones
        gate_model = selected[0] if len(selected) == 1 else OfferEnsemble(selected).eval()
    if valid is not None and cfg.grid_epsilon and decision is not None:   # valued by the fit before any refit
        keep = in_grid(valid, p, a)
        q = q_values(gate_model if gate_model is not None else net, valid.history, valid.profile)   # (N, P, A)
        decision, selection["decision"] = select_epsilon(
            logged_bandit(valid, p, a), q, valid_allowed, keep, decision, cfg.grid_epsilon, cfg.min_propensity,
            int(mask.sum()), _compared(cfg.select), OpeConfig(resamples=SELECT_RESAMPLES, seed=cfg.seed))
    if valid is not None and cfg.grid_epsilon and decision is None:
        selection["decision"] = {"skipped": "offers.grid_epsilon: no decision layer was given to choose for"}
    if selection:
        info["selection"] = selection
    chosen = decision if "candidates" in selection.get("decision", {}) else None
    return FittedOffers(net, vocab, cfg, info, held_out, gate_model, chosen)


def select_wide(train: OfferRows, valid: OfferRows, allowed: np.ndarray, vocab: OfferVocab, cfg: OfferConfig,
                nudge_family: np.ndarray | None, mask: np.ndarray, scale: float) -> tuple[OfferConfig, dict]:
    """The wide model's ridge and cross set, chosen among cfg's (the default, first) and the grids' (every
    combination) by the held-out value of each wide model's greedy policy (allowed (N, P, A): the pairs it
    chooses among): the default unless the best beats it beyond chance (rl/offers/select.py). Each candidate
    is the convex fit of epoch 0, seconds each; the deep epochs then refine the chosen one only."""
    p, a = len(vocab.items), len(vocab.nudges)
    keep = in_grid(valid, p, a)
    candidates = [dataclasses.replace(cfg, wide_l2=l2, cross=cross)
                  for cross in dict.fromkeys((cfg.cross, *cfg.grid_cross))
                  for l2 in dict.fromkeys((cfg.wide_l2, *cfg.grid_wide_l2))]
    policies = []
    for c in candidates:
        model, _ = _train(lambda c=c: offer_network(vocab, c, nudge_family, scale), train, c, mask, scale, 0, None)
        q = q_values(model, valid.history, valid.profile)                                    # (N, P, A)
        action = np.argmax(np.where(allowed, q, -np.inf).reshape(len(valid), -1), axis=1)   # (N,)
        policies.append(one_hot(action[keep], p * a))
    estimator = _compared(cfg.select)
    estimates = compare_candidates(logged_bandit(valid, p, a), policies, estimator,
                                   OpeConfig(resamples=SELECT_RESAMPLES, seed=cfg.seed))
    chosen = choose_candidate(estimates)
    return candidates[chosen], {
        "estimator": estimator, "default": 0, "chosen": chosen,
        "candidates": [{"wide_l2": c.wide_l2, "cross": list(c.cross), **e} for c, e in zip(candidates, estimates)]}


def _compared(select: str) -> str:
    """The estimator that compares candidates: the selection's, SNIPS when selection is by loss."""
    return select if select in ("snips", "dr") else "snips"


def choose_epoch(log: LoggedBandit, actions: list[np.ndarray], values: np.ndarray, losses: np.ndarray,
                 select: str, config: OpeConfig, base: int | None = None) -> int:
    """Index of the chosen epoch. By held-out loss: the lowest. By off-policy value (snips, dr): the epoch of the
    highest estimate when its greedy policy beats the `base` epoch's beyond chance (the paired bootstrap interval
    of the difference lies above 0), else `base` (default: the lowest-loss epoch; the fit passes epoch 0, the
    wide model alone, when it fits one first). On a uniformly exploring log a greedy policy's estimate has a
    standard error of a few points, more than epochs differ by, so a plain arg-max would pick by noise; and a
    lower loss is no better decision (the deep parts lower it most by predicting who buys anything, not which
    offer), so more capacity is taken only where the value shows it pays."""
    if select == "loss":
        return int(np.argmin(losses))
    base = int(np.argmin(losses)) if base is None else base
    best = int(np.argmax(values))
    if best == base:
        return base
    one_hot = [np.eye(log.n_actions)[actions[i]] for i in (best, base)]                  # (N, A) each
    c = compare_policies(log, one_hot[0], one_hot[1], select, config,
                         Predictions(np.zeros((log.n, log.n_actions))) if select == "dr" else None)
    return best if c.difference_low > 0 else base


def _train(build, rows: OfferRows, cfg: OfferConfig, mask: np.ndarray, scale: float, epochs: int,
           evaluate) -> tuple[OfferQNet, dict]:
    """`epochs` epochs of fitted Q on `rows` through the fit loop (one step an epoch, `evaluate` after each when
    given); the model as trained and the loop's result."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build()
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        order = torch.Generator().manual_seed(cfg.seed)
        hist, prof = torch.from_numpy(rows.history), torch.from_numpy(rows.profile)
        item, nudge = torch.from_numpy(rows.item), torch.from_numpy(rows.nudge)
        items, nudges = grid(model.n_items, model.n_nudges)
        pmask = torch.from_numpy(mask)

        def targets() -> torch.Tensor:
            frozen = copy.deepcopy(model).eval() if cfg.gamma > 0 else None
            y = contact_targets(rows, lambda h, p: q_values(frozen, h, p), cfg.gamma, mask)
            return torch.from_numpy(y / scale).float().clamp(0.0, 1.0)

        def epoch(step: int) -> dict:
            y = targets()
            model.train()
            total = 0.0
            for idx in torch.randperm(len(rows), generator=order).split(cfg.batch_size):
                if cfg.cql_alpha > 0:
                    all_logits = model.all_logits(hist[idx], prof[idx], items, nudges)      # (B, P, A)
                    b = torch.arange(len(idx))
                    logit = all_logits[b, item[idx] - items[0], nudge[idx] - nudges[0]]
                    ok = pmask[None].expand(len(idx), -1, -1)
                    conservative = torch.logsumexp(all_logits.masked_fill(~ok, -torch.inf).flatten(1), 1) - logit
                else:
                    logit = model.logits(hist[idx], prof[idx], item[idx, None], nudge[idx, None]).squeeze(1)
                    conservative = torch.zeros(())
                loss = F.binary_cross_entropy_with_logits(logit, y[idx]) + cfg.cql_alpha * conservative.mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            return {"offers/loss": total / len(rows)}

        if wide_first(cfg):   # epoch 0: the wide model alone, fitted to convergence
            fit_wide(model, hist, prof, item, nudge, targets(), cfg.wide_l2)
            if evaluate is not None:
                evaluate(model)
        if evaluate is None:
            for step in range(epochs):
                epoch(step)
            return model, {"step": epochs}
        result = fit(epoch, lambda: evaluate(model), Schedule(epochs, eval_every=1))
    return model, result.as_dict()


def wide_first(cfg: OfferConfig) -> bool:
    """Whether fitting starts with the wide model alone (wide terms with the additive head)."""
    return cfg.wide and cfg.head == "additive"


def fit_wide(model: OfferQNet, hist: torch.Tensor, prof: torch.Tensor, item: torch.Tensor, nudge: torch.Tensor,
             y: torch.Tensor, l2: float) -> None:
    """The wide model (a logistic regression: profile level x product and x nudge weights and a bias per pair)
    fitted by L-BFGS to convergence on all rows while the deep parts are still 0 (their last layers start at 0):
    a convex fit that the deep parts then refine. l2: ridge penalty in units of rows, on every weight but the
    profile's main effects and the pair biases (the intercepts). (B = N rows here.)"""
    params, penalised = model.wide_parameters(), model.wide_penalised()   # never the main effects and pair biases
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=200, tolerance_grad=1e-7, line_search_fn="strong_wolfe")
    n = len(y)

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        z = model.wide(prof, hist, item[:, None], nudge[:, None]).squeeze(1) \
            + model.pair_bias(item * model.n_nudges + nudge).squeeze(-1)                  # (N,)
        loss = F.binary_cross_entropy_with_logits(z, y) + l2 / n * sum(p.pow(2).sum() for p in penalised)
        loss.backward()
        return loss

    opt.step(closure)
