"""Scored propensities for every bandit kind: the nudge distribution the scorer draws from sums to 1 over the
arms the catalogue allows with the item and is 0 on the others, and each row's logged `propensity` is that
distribution's probability of the drawn arm (epsilon-greedy, UCB1 and Thompson through the context-free path,
LinUCB through the contextual one, and a fresh bandit of the run's [bandit] without RUN/bandit.json)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from seqrec.datasets.sessions import gap_us
from seqrec.rl.bandits.fit import save_bandit
from seqrec.rl.bandits.policies import BanditConfig

from seqrec.runs.score_config import ScoreConfig
from seqrec.serve import scoring
from seqrec.serve.scoring import load_bundle, score_batch, window_matrix
from seqrec.serve.sessions_state import session_states


@pytest.fixture(scope="module")
def plain(score_world) -> dict:
    """The shared world's run without retrieval, its catalogue's arms and mask, and its session states."""
    bundle = load_bundle(score_world["plain"], ScoreConfig())
    states = session_states(pq.read_table(score_world["log"]), bundle.window, gap_us(30.0))
    mask = bundle.arm_mask
    # an arm some items may not get: the arm the trained bandits below prefer, so its forbidden rows matter
    best = int(np.flatnonzero(~mask.all(axis=0))[0])
    return {"run": score_world["plain"], "arms": bundle.arm_ids, "mask": mask, "best": best, "states": states}


def run_with(plain: dict, tmp_path: Path, bandit=None, kind: str | None = None) -> Path:
    """A copy of the plain run with `bandit` saved as its bandit.json, or without one and [bandit] kind = kind."""
    run = tmp_path / "run"
    shutil.copytree(plain["run"], run)
    for f in ("bandit.json", "bandit.npz"):
        (run / f).unlink(missing_ok=True)
    if bandit is not None:
        save_bandit(bandit, run)
    if kind is not None:
        cfg = json.loads((run / "config.json").read_text())
        cfg["bandit"] = {**cfg.get("bandit", {}), "kind": kind}
        (run / "config.json").write_text(json.dumps(cfg))
    return run


def drawn(run: Path, plain: dict, monkeypatch) -> tuple:
    """Score the sessions, capturing the (N, A) probabilities score_batch hands draw_arms and the arms drawn;
    returns them with the rows, each row's catalogue index and the bundle."""
    seen = []
    real = scoring.draw_arms

    def spy(probs, u):
        arms = real(probs, u)
        seen.append((probs.copy(), arms.copy()))
        return arms
    monkeypatch.setattr(scoring, "draw_arms", spy)
    bundle = load_bundle(run, ScoreConfig())
    df = score_batch(bundle, plain["states"]).to_pandas()
    assert len(seen) == 1
    probs, arms = seen[0]
    index = {v: i for i, v in enumerate(bundle.item_ids.to_pylist()) if v is not None}
    items = df["item_id"].map(index).to_numpy()
    return probs, arms, df, items, bundle


def check_distribution(probs, arms, df, items, bundle) -> np.ndarray:
    """The shared checks; returns the (N, A) mask of allowed arms per row."""
    allowed = bundle.arm_mask[items]                                         # (N, A)
    assert probs.shape == allowed.shape and len(df) == len(arms) > 0
    assert not allowed.all()                                                 # some rows forbid some arms
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=0, atol=1e-12)   # a distribution over the arms ...
    assert (probs[~allowed] == 0).all() and (probs >= 0).all()               # ... of the allowed arms only
    assert allowed[np.arange(len(arms)), arms].all()                         # the drawn arm is allowed ...
    logged = df["propensity"].to_numpy()
    assert np.array_equal(logged, probs[np.arange(len(arms)), arms])         # ... and logged with its probability
    assert (logged > 0).all()
    assert list(df["nudge_id"].astype(str)) == [bundle.arm_ids[a] for a in arms]
    # the (product, nudge) decision: the ranked item is deterministic (P = 1), the joint is the product of the two
    assert (df["product_propensity"].to_numpy() == 1.0).all()
    assert np.array_equal(df["joint_propensity"].to_numpy(), df["product_propensity"].to_numpy() * logged)
    return allowed


def trained(kind: str, plain: dict, dim: int = 0, **kw):
    """A bandit of `kind` that has seen the preferred arm pay 1 and every other arm pay 0, once each."""
    bandit = BanditConfig(kind=kind, seed=1, **kw).create(plain["arms"], dim)
    a = len(plain["arms"])
    rewards = (np.arange(a) == plain["best"]).astype(float)
    contexts = np.random.default_rng(0).normal(size=(a, dim)) if dim else None
    bandit.update_batch(contexts, np.arange(a), rewards)
    return bandit


def test_epsilon_greedy_draws_from_its_probabilities(plain, tmp_path, monkeypatch):
    probs, arms, df, items, bundle = drawn(run_with(plain, tmp_path, trained("epsilon_greedy", plain)), plain,
                                           monkeypatch)
    allowed = check_distribution(probs, arms, df, items, bundle)
    np.testing.assert_array_equal(probs, bundle.arm_probs[items])
    # by hand: where the preferred arm b is allowed, 0.1 / k on each of the k allowed arms plus 0.9 on b;
    # where it is not, every allowed arm has value 0 (a tie): 1 / k each
    k = allowed.sum(axis=1, keepdims=True)
    b = plain["best"]
    want = np.where(allowed[:, [b]], 0.1 * allowed / k + 0.9 * (np.arange(allowed.shape[1]) == b), allowed / k)
    np.testing.assert_allclose(probs, want, rtol=0, atol=1e-12)
    assert (~allowed[:, b]).any() and allowed[:, b].any()                    # both cases occur


def test_ucb1_draws_from_its_probabilities(plain, tmp_path, monkeypatch):
    probs, arms, df, items, bundle = drawn(run_with(plain, tmp_path, trained("ucb1", plain)), plain, monkeypatch)
    allowed = check_distribution(probs, arms, df, items, bundle)
    # by hand: every arm tried once, so the bonus is equal and the preferred arm's mean 1 wins where allowed
    # (probability 1, propensity 1); elsewhere the allowed arms tie at mean 0: 1 / k each
    b = plain["best"]
    k = allowed.sum(axis=1, keepdims=True)
    want = np.where(allowed[:, [b]], (np.arange(allowed.shape[1]) == b).astype(float), allowed / k)
    np.testing.assert_allclose(probs, want, rtol=0, atol=1e-12)
    assert (df["propensity"].to_numpy()[allowed[:, b]] == 1.0).all()


def test_thompson_draws_from_its_probabilities(plain, tmp_path, monkeypatch):
    run = run_with(plain, tmp_path, trained("thompson", plain, mc_samples=400))
    probs, arms, df, items, bundle = drawn(run, plain, monkeypatch)
    allowed = check_distribution(probs, arms, df, items, bundle)
    np.testing.assert_array_equal(probs, bundle.arm_probs[items])
    b = plain["best"]
    # Beta(2, 1) against Beta(1, 2)s: the preferred arm is the most likely where allowed
    assert (probs[allowed[:, b]].argmax(axis=1) == b).all()


def test_linucb_draws_from_its_probabilities_on_the_contextual_path(plain, tmp_path, monkeypatch):
    dim = json.loads((plain["run"] / "config.json").read_text())["encoder"]["dim"]
    run = run_with(plain, tmp_path, trained("linucb", plain, dim=dim, epsilon=0.2))
    probs, arms, df, items, bundle = drawn(run, plain, monkeypatch)
    assert bundle.arm_probs is None and bundle.bandit is not None           # the contextual path
    allowed = check_distribution(probs, arms, df, items, bundle)
    # the epsilon floor: every allowed arm has at least 0.2 / k
    k = allowed.sum(axis=1, keepdims=True)
    assert (probs[allowed] >= (0.2 / k * allowed)[allowed] - 1e-12).all()


@pytest.mark.parametrize("kind", ["epsilon_greedy", "ucb1", "thompson"])
def test_a_fresh_bandit_of_the_runs_kind_is_uniform_over_the_allowed_arms(plain, tmp_path, monkeypatch, kind):
    """No RUN/bandit.json: a fresh bandit of the run's [bandit] kind; untrained, every kind is uniform over the
    allowed arms (equal values, untried arms tie, equal Beta(1, 1) posteriors up to Monte-Carlo error)."""
    probs, arms, df, items, bundle = drawn(run_with(plain, tmp_path, kind=kind), plain, monkeypatch)
    assert kind in bundle.info["policy"] or kind == "epsilon_greedy"
    allowed = check_distribution(probs, arms, df, items, bundle)
    k = allowed.sum(axis=1, keepdims=True)
    tol = 1e-12 if kind != "thompson" else 0.05  # 1000 draws: a standard error under 0.013
    np.testing.assert_allclose(probs, allowed / k, rtol=0, atol=tol)


@pytest.mark.parametrize("kind", ["epsilon_greedy", "linucb"])
def test_scored_rows_carry_the_joint_propensity_of_the_full_distribution(plain, tmp_path, kind):
    """Without looking inside score_batch: the full nudge distribution of every row, recomputed here from the bundle
    (the context-free table per item, or LinUCB on the learner's encoding of the session's window), sums to 1 over
    the arms allowed with the row's item; the row's propensity is its value at the drawn nudge; the product's is 1
    (the ranking is deterministic) and joint_propensity = product_propensity * propensity."""
    dim = json.loads((plain["run"] / "config.json").read_text())["encoder"]["dim"] if kind == "linucb" else 0
    bundle = load_bundle(run_with(plain, tmp_path, trained(kind, plain, dim=dim, epsilon=0.2)), ScoreConfig())
    states = plain["states"]
    df = score_batch(bundle, states).to_pandas()
    index = {v: i for i, v in enumerate(bundle.item_ids.to_pylist()) if v is not None}
    items = df["item_id"].map(index).to_numpy()  # (N,) catalogue index of each row's product
    arms = df["nudge_id"].astype(str).map({a: i for i, a in enumerate(bundle.arm_ids)}).to_numpy()
    allowed = bundle.arm_mask[items]  # (N, A)
    if kind == "linucb":
        assert bundle.arm_probs is None and not df["fallback"].any()
        with torch.no_grad():
            state = bundle.learner.encode(torch.from_numpy(window_matrix(bundle, states.column("items"))))
        session = np.cumsum(df["rank"].to_numpy() == 1) - 1  # (N,) each row's session: rows come in session order
        assert session[-1] == states.num_rows - 1
        full = bundle.bandit.probabilities_batch(state.double().numpy()[session], allowed)  # (N, A)
    else:
        full = bundle.arm_probs[items]
    assert not allowed.all()  # some rows forbid some nudges
    np.testing.assert_allclose(full.sum(axis=1), 1.0, rtol=0, atol=1e-12)  # over the allowed nudges of the row
    assert (full[~allowed] == 0).all() and allowed[np.arange(len(df)), arms].all()
    np.testing.assert_allclose(df["propensity"], full[np.arange(len(df)), arms], rtol=1e-9)
    assert (df["product_propensity"] == 1.0).all()
    np.testing.assert_array_equal(df["joint_propensity"], df["product_propensity"] * df["propensity"])
    assert df["joint_propensity"].between(0, 1, inclusive="right").all()
