"""`seqrec score` with a run's offer learner (seqrec/serve/offers.py): each session's offer is the decision layer's
draw over Q of the allowed (product, nudge) pairs, computed here by hand from the customer's history up to the
session's end; its propensities are the layer's; held and forbidden pairs are never offered; a profile level
unseen in training scores; --no-offers and a run without offers give today's rows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from seqrec.datasets.offers import OfferVocab
from seqrec.datasets.schema import FIRST_ITEM
from seqrec.rl.offers.decide import q_values
from synthetic_data import prepared_log
from test_offer_runs import RUN

from seqrec.cli.main import main
from seqrec.runs.config import load_run_config
from seqrec.runs.train import train
from seqrec.training.offer_store import load_offers

OFFER_COLUMNS = ["offer_item_id", "offer_nudge_id", "offer_q", "offer_joint_propensity", "offer_product_propensity"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """test_offer_runs.py's small log and run file: a run with RUN/offers (profile user_segment, history 6)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("score_offers")
    data = prepared_log(d)  # d/events.parquet and its prepared folder
    (d / "run.toml").write_text(RUN)
    train(load_run_config(d / "run.toml", [], str(data)), d / "run", progress=False)
    torch.set_num_threads(threads)
    return {"dir": d, "log": d / "events.parquet", "run": d / "run"}


def score(run: Path, log: Path, out: Path, *extra: str) -> tuple[pd.DataFrame, dict]:
    assert main(["score", "--run", str(run), "--input", str(log), "--out", str(out), "--no-progress", *extra]) == 0
    return pd.read_parquet(out / "scores"), json.loads((out / "manifest.json").read_text())


def sessions_of(df: pd.DataFrame) -> pd.DataFrame:
    """One row per scored session (its rank-1 row), after checking every row of a session carries one offer."""
    per = df.groupby(["user_id", "session_id"])[OFFER_COLUMNS].nunique()
    assert (per == 1).all().all()
    return df[df["rank"] == 1].reset_index(drop=True)


def by_hand(log: Path, first: pd.DataFrame, vocab: OfferVocab, window: int) -> tuple[np.ndarray, np.ndarray]:
    """(S, W, 3) history codes and (S, C) profile codes of each session of `first`: the customer's last W events
    of the log at or before the session's last event (time order, ties in file order), and the profile value on
    the session's first event, written out with pandas."""
    ev = pd.read_parquet(log).reset_index(drop=True)
    ev["order"] = np.arange(len(ev))
    ev = ev.sort_values(["user_id", "timestamp", "order"], kind="stable")
    ends = ev.groupby(["user_id", "session_id"])["timestamp"].max()
    heads = ev.groupby(["user_id", "session_id"]).head(1).set_index(["user_id", "session_id"])
    hist = np.zeros((len(first), window, 3), np.int64)
    profile_values = {name: [] for name, _ in vocab.profile}
    for s, (user, session) in enumerate(zip(first["user_id"], first["session_id"])):
        mine = ev[(ev["user_id"] == user) & (ev["timestamp"] <= ends[(user, session)])].tail(window)
        codes = np.stack([vocab.item_codes(mine["item_id"].to_numpy()),
                          vocab.event_codes(mine["event_type"].to_numpy()),
                          vocab.nudge_codes(mine["nudge_id"].to_numpy())], axis=1)
        hist[s, window - len(mine):] = codes
        for name in profile_values:
            profile_values[name].append(heads.loc[(user, session), name])
    return hist, vocab.profile_codes({k: np.asarray(v, dtype=object) for k, v in profile_values.items()}, len(first))


def held_by_hand(hist: np.ndarray, n_products: int) -> np.ndarray:
    """(S, P) products a purchase in the history shows (event code 1 + index of "purchase" in the vocabulary)."""
    held = np.zeros((len(hist), n_products), bool)
    purchase = 1 + list(OfferVocab((), ()).event_types).index("purchase")
    for s, row in enumerate(hist):
        for item, etype, _ in row:
            if etype == purchase and item >= FIRST_ITEM:
                held[s, item - FIRST_ITEM] = True
    return held


def expected(world, first: pd.DataFrame, log: Path | None = None) -> dict:
    fitted, mask = load_offers(world["run"] / "offers")
    vocab = fitted.vocab
    hist, profile = by_hand(log or world["log"], first, vocab, fitted.config.history)
    q = q_values(fitted.model, hist, profile)                                                  # (S, P, A)
    held = held_by_hand(hist, len(vocab.items))
    held[held.all(axis=1)] = False                                      # holding every product: none is held
    allowed = ~held[:, :, None] & mask[None]                                                   # (S, P, A)
    written_p = pd.Index(np.asarray(vocab.items).astype(int)).get_indexer(first["offer_item_id"].to_numpy())
    written_a = pd.Index(vocab.nudges).get_indexer(first["offer_nudge_id"].astype(str).to_numpy())
    assert (written_p >= 0).all() and (written_a >= 0).all()
    return {"q": q, "allowed": allowed, "held": held, "p": written_p, "a": written_a, "vocab": vocab, "mask": mask,
            "profile": profile}


def test_greedy_offer_is_the_argmax_of_q_over_the_allowed_pairs(world, tmp_path):
    df, m = score(world["run"], world["log"], tmp_path / "out", "--offer-decision", "greedy")
    assert m["rows_quarantined"] == 0 and m["offers"]["used"] and m["offers"]["decision"]["kind"] == "greedy"
    first = sessions_of(df)
    e = expected(world, first)
    s, p, a = e["q"].shape
    best = np.argmax(np.where(e["allowed"], e["q"], -np.inf).reshape(s, -1), axis=1)          # (S,)
    np.testing.assert_array_equal(e["p"], best // a)
    np.testing.assert_array_equal(e["a"], best % a)
    np.testing.assert_allclose(first["offer_q"], e["q"][np.arange(s), best // a, best % a], rtol=1e-5)
    assert (first["offer_joint_propensity"] == 1.0).all() and (first["offer_product_propensity"] == 1.0).all()
    assert e["held"].any()   # some sessions hold a product, so the mask matters
    assert len(np.unique(best)) > 1   # the offer depends on the customer


def test_epsilon_greedy_propensities_are_the_layers(world, tmp_path):
    eps = 0.3
    df, _ = score(world["run"], world["log"], tmp_path / "out", "--offer-epsilon", str(eps), "--seed", "5")
    first = sessions_of(df)
    e = expected(world, first)
    s, p, a = e["q"].shape
    allowed = e["allowed"].reshape(s, -1)
    best = np.argmax(np.where(allowed, e["q"].reshape(s, -1), -np.inf), axis=1)
    probs = np.where(allowed, eps / allowed.sum(axis=1, keepdims=True), 0.0)                  # (S, P * A)
    probs[np.arange(s), best] += 1 - eps
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    cell = e["p"] * a + e["a"]
    assert allowed[np.arange(s), cell].all()
    np.testing.assert_allclose(first["offer_joint_propensity"], probs[np.arange(s), cell], rtol=1e-12)
    np.testing.assert_allclose(first["offer_product_propensity"],
                               probs.reshape(s, p, a)[np.arange(s), e["p"]].sum(axis=1), rtol=1e-12)
    explored = cell != best
    assert 0 < explored.mean() < 2 * eps   # exploration happens, at about the rate epsilon gives
    # a seed fixes the draws: the same command gives the same offers, another seed other ones
    again, _ = score(world["run"], world["log"], tmp_path / "again", "--offer-epsilon", str(eps), "--seed", "5")
    pd.testing.assert_frame_equal(df[OFFER_COLUMNS], again[OFFER_COLUMNS])
    other, _ = score(world["run"], world["log"], tmp_path / "other", "--offer-epsilon", str(eps), "--seed", "6")
    assert (sessions_of(other)["offer_item_id"] != first["offer_item_id"]).any()


def test_held_and_forbidden_pairs_are_never_offered(world, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    note = json.loads((run / "offers" / "offers.json").read_text())
    p, a = len(note["vocab"]["items"]), len(note["vocab"]["nudges"])
    mask = np.ones((p, a), bool)
    mask[::2, 1:] = False             # even products: only the first nudge; odd products: the first nudge never
    mask[1::2, 0] = False
    note["nudge_mask"] = mask.tolist()
    (run / "offers" / "offers.json").write_text(json.dumps(note))
    # epsilon 1: uniform over the allowed pairs, so many pairs are drawn
    df, _ = score(run, world["log"], tmp_path / "out", "--offer-epsilon", "1")
    first = sessions_of(df)
    e = expected({"run": run, "log": world["log"]}, first)
    assert mask[e["p"], e["a"]].all()
    assert not e["held"][np.arange(len(first)), e["p"]].any()
    np.testing.assert_allclose(first["offer_joint_propensity"], 1.0 / e["allowed"].reshape(len(first), -1).sum(1))
    assert len(np.unique(e["a"])) > 2 and e["held"].any()


def test_a_profile_level_unseen_in_training_scores_as_unknown(world, tmp_path):
    table = pd.read_parquet(world["log"])
    new = table["user_id"] % 3 == 0
    table.loc[new, "user_segment"] = "never_seen_segment"
    log = tmp_path / "events.parquet"
    table.to_parquet(log)
    df, m = score(world["run"], log, tmp_path / "out", "--offer-decision", "greedy")
    first = sessions_of(df)
    e = expected(world, first, log)
    unknown = (first["user_id"] % 3 == 0).to_numpy()
    assert (e["profile"][unknown] == 0).all() and (e["profile"][~unknown] > 0).all()
    s, _, a = e["q"].shape
    best = np.argmax(np.where(e["allowed"], e["q"], -np.inf).reshape(s, -1), axis=1)
    np.testing.assert_array_equal(e["p"] * a + e["a"], best)
    assert m["sessions"]["scored"] == len(first)


def test_no_offers_gives_todays_rows(world, tmp_path):
    plain, m = score(world["run"], world["log"], tmp_path / "plain", "--no-offers")
    assert not set(OFFER_COLUMNS) & set(plain.columns) and m["offers"]["used"] is False
    bare = tmp_path / "bare" / world["run"].name        # the same run without its offer learner: today's scoring
    shutil.copytree(world["run"], bare)
    shutil.rmtree(bare / "offers")
    today, m_bare = score(bare, world["log"], tmp_path / "today")
    assert m_bare["config_hash"] == m["config_hash"] and not m_bare["offers"]["used"]
    pd.testing.assert_frame_equal(plain, today)
    offered, m_off = score(world["run"], world["log"], tmp_path / "offered")
    assert m_off["config_hash"] != m["config_hash"]   # the offers enter the hash: an old output is not reused
    pd.testing.assert_frame_equal(offered.drop(columns=[*OFFER_COLUMNS, "config_hash"]),
                                  plain.drop(columns=["config_hash"]))
    assert main(["score", "--run", str(bare), "--input", str(world["log"]), "--out", str(tmp_path / "x"),
                 "--no-progress", "--offers"]) != 0


def test_the_offer_flags_are_checked(world, tmp_path, capsys):
    assert main(["score", "--run", str(world["run"]), "--input", str(world["log"]), "--out", str(tmp_path / "o"),
                 "--no-progress", "--offer-epsilon", "2"]) != 0
    assert "--offer-epsilon" in capsys.readouterr().err


def test_offers_do_not_depend_on_batching_or_buckets(world, tmp_path):
    one, _ = score(world["run"], world["log"], tmp_path / "one", "--offer-epsilon", "0.5")
    many, m = score(world["run"], world["log"], tmp_path / "many", "--offer-epsilon", "0.5", "--batch-size", "7",
                    "--bucket-rows", "300", "--workers", "2")
    assert len(m["parts"]) > 1
    key = ["user_id", "session_id", "rank"]
    pd.testing.assert_frame_equal(many.sort_values(key).reset_index(drop=True),
                                  one.sort_values(key).reset_index(drop=True), check_categorical=False)


def test_the_ray_engine_writes_the_local_engines_offers(world, tmp_path):
    ray = pytest.importorskip("ray", reason="the Ray engine needs the ray extra: pip install -e '.[ray]'")
    local, _ = score(world["run"], world["log"], tmp_path / "local", "--offer-epsilon", "0.3")
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:   # small batches: the sessions of a customer land in several batches and actors
        far, m = score(world["run"], world["log"], tmp_path / "ray", "--engine", "ray", "--offer-epsilon", "0.3",
                       "--batch-size", "64")
    finally:
        ray.shutdown()
    assert m["engine"] == "ray" and m["offers"]["used"]
    key = ["user_id", "session_id", "session_start", "rank"]
    pd.testing.assert_frame_equal(far.sort_values(key).reset_index(drop=True),
                                  local.sort_values(key).reset_index(drop=True), check_categorical=False)
