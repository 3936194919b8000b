"""Re-ranking and the pipeline: the blend by hand, ranks under the evaluation protocol, the pipeline over the
whole catalogue equal to full ranking, the fast candidate scorer equal to gathering full vectors, and the
`seqrec train` / `seqrec evaluate` integration with metrics.json keeping its shape."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from seqrec.datasets.manifest import load_transitions
from seqrec.rl.qlearning.learner import Learner
from seqrec.rl.qlearning.losses import HeadConfig
from synthetic_data import prepared_log

from seqrec.cli.main import main
from seqrec.core.config import ConfigError
from seqrec.models.encoders import EncoderConfig
from seqrec.retrieval.config import IndexConfig, RerankConfig
from seqrec.retrieval.features import FeatureSpec
from seqrec.retrieval.index import ExactIndex
from seqrec.retrieval.rerank import (
    Candidates,
    Pipeline,
    blend,
    build_pipeline,
    evaluate_pipeline,
    gather_scorer,
    learner_scorer,
    pipeline_ranks,
    rerank,
    rerank_batch,
    top_order,
)
from seqrec.retrieval.two_tower import RecallMetrics, TwoTower
from seqrec.runs.config import load_run_config
from seqrec.runs.pipeline import load_pipeline
from seqrec.training.evaluation import evaluate_arrays

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    return prepared_log(d)


def test_blend_zscores_each_score_over_the_valid_candidates_by_hand():
    tt = torch.tensor([[1.0, 2.0, 3.0, 99.0]])
    sup = torch.tensor([[10.0, 30.0, 20.0, 99.0]])
    q = torch.tensor([[0.5, 0.5, 0.5, 0.5]])  # constant over the row: z-score 0
    valid = torch.tensor([[True, True, True, False]])  # the last is padding from an approximate index
    z = math.sqrt(2 / 3)  # population std of (1, 2, 3); of (10, 30, 20) it is 10 z
    cfg = RerankConfig(w_tt=1.0, w_sup=2.0, w_q=5.0)
    expected = [(-1 / z) + 2 * (-1 / z), 0.0 + 2 * (1 / z), (1 / z) + 0.0]
    out = blend(tt, sup, q, cfg, valid)
    assert out[0, :3].tolist() == pytest.approx(expected) and out[0, 3] == -math.inf
    raw = blend(tt, sup, q, RerankConfig(w_tt=1.0, w_sup=2.0, w_q=5.0, normalize="raw"), valid)
    assert raw[0, :3].tolist() == pytest.approx([1 + 20 + 2.5, 2 + 60 + 2.5, 3 + 40 + 2.5])
    # no Q head: its weight is skipped, not a NaN
    assert torch.isfinite(blend(tt, sup, None, cfg, valid)[0, :3]).all()


def test_pipeline_ranks_follow_the_evaluation_protocol_by_hand():
    ids = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 8], [5, 6, 7, 8], [5, 6, 7, 0]])
    final = torch.tensor([[4.0, 3.0, 3.0, 1.0]] * 3 + [[4.0, 3.0, 2.0, -math.inf]])
    c = Candidates(ids, final, final, final, final)
    ranks = pipeline_ranks(c, torch.tensor([7, 9, 1, 6]), num_items=40)
    # 7: one candidate strictly higher (the tie with 6 counts for the target); 9 not retrieved; OOV never a hit
    assert ranks.tolist() == [1, 40, 40, 1]


def test_recall_metrics_by_hand():
    r = RecallMetrics(("view", "buy"), ks=(1, 2))
    r.add(torch.tensor([[3, 4], [5, 6], [7, 8]]), torch.tensor([4, 5, 9]), torch.tensor([0, 1, 1]))
    out = r.result()
    assert out["all"] == {"recall@1": pytest.approx(1 / 3), "recall@2": pytest.approx(2 / 3), "count": 3}
    assert out["view"]["recall@1"] == 0.0 and out["view"]["recall@2"] == 1.0 and out["buy"]["recall@2"] == 0.5


def _fixture_models(variant: str = "sqn", num_items: int = 40) -> tuple[Learner, TwoTower]:
    enc = EncoderConfig(num_items=num_items, max_len=10, dim=8, dropout=0.0)
    torch.manual_seed(0)
    learner = Learner(enc, HeadConfig(variant=variant), lr=0.01).eval()
    tower = TwoTower(enc, FeatureSpec(), FeatureSpec()).eval()
    return learner, tower


@pytest.mark.parametrize("k", [1, 7], ids=["rows-gathered", "dense-product"])  # I = 40 vs 32 K
def test_fast_candidate_scorer_equals_gathering_the_full_vectors(k):
    learner, _ = _fixture_models()
    items = torch.randint(0, 40, (6, 10))
    ids = torch.randint(2, 40, (6, k))
    with torch.no_grad():
        sup, q = learner_scorer(learner)(items, ids)
        ref_sup, ref_q = gather_scorer(learner.scores, learner.q_values)(items, ids)
    torch.testing.assert_close(sup, ref_sup)
    torch.testing.assert_close(q, ref_q)


@pytest.mark.parametrize("top", [1, 3, 10, 19, 20, None])
def test_top_order_is_a_stable_descending_sort(top):
    """Rows with distinct values, ties inside and at the cut, -inf padding and NaN: the same columns in the
    same order as a stable sort's first `top` (ties in column order)."""
    g = torch.Generator().manual_seed(top or 0)
    x = torch.randn(64, 20, generator=g)
    x[1] = 0.5  # all tied
    x[2, 5:] = -torch.inf  # padding: fewer real candidates than top + 1
    x[3, [2, 7, 11]] = x[3].max() + 1  # a three-way tie at the head
    x[4] = torch.randint(0, 3, (20,), generator=g).float()  # many ties across the cut
    x[5, 4] = torch.nan
    want = torch.sort(x, dim=1, descending=True, stable=True).indices[:, :top]
    assert torch.equal(top_order(x, top), want)


def test_rerank_keeps_ids_and_scores_aligned_and_sorted():
    def scorer(items, ids):  # supervised = -id, Q = id / 10
        return -ids.float(), ids.float() / 10

    p = Pipeline(tower=None, index=None, scorer=scorer, rerank=RerankConfig(w_sup=1.0, normalize="raw"))
    ids = torch.tensor([[9, 3, 0, 6]])
    c = rerank(p, torch.zeros(1, 2, dtype=torch.long), ids, torch.tensor([[0.4, 0.3, 0.2, 0.1]]), top=3)
    assert c.ids.tolist() == [[3, 6, 9]] and c.supervised.tolist() == [[-3.0, -6.0, -9.0]]
    assert c.two_tower[0].tolist() == pytest.approx([0.3, 0.1, 0.4]) and c.q[0].tolist() == pytest.approx([.3, .6, .9])
    assert c.final.tolist() == [[-3.0, -6.0, -9.0]]


def test_pipeline_over_the_whole_catalogue_equals_full_ranking(data):
    """With K = every item and only the supervised weight, retrieve + re-rank must give exactly the metrics of
    ranking the whole catalogue: the protocol is the same, only the candidate set differs."""
    size = json.loads((data / "manifest.json").read_text())["catalogue_size"]
    learner, tower = _fixture_models(num_items=size)
    arrays = load_transitions(data, "valid")
    names = ("view", "like", "cart", "purchase")
    full = evaluate_arrays(learner.scores, arrays, names, torch.device("cpu"), 64)
    p = build_pipeline(tower, learner, RerankConfig(candidates=size - 2), IndexConfig())
    out = evaluate_pipeline(p, arrays, None, names, batch_size=64)
    assert out["pipeline"].keys() == full.keys()
    for ev in full:
        for m in full[ev]:
            assert out["pipeline"][ev][m] == pytest.approx(full[ev][m], abs=1e-9), (ev, m)
    assert out["recall"]["all"]["recall@50"] == 1.0  # every target is a real item, all are candidates
    small = evaluate_pipeline(build_pipeline(tower, learner, RerankConfig(candidates=5), IndexConfig()), arrays,
                              None, names, batch_size=64)
    assert small["pipeline"]["view"]["hr@10"] <= small["pipeline"]["view"]["hr@5"] + 1e-12  # nothing past K


def test_score_batch_returns_top_candidates_and_nan_q_without_a_q_head():
    learner, tower = _fixture_models("ce")
    p = build_pipeline(tower, learner, RerankConfig(candidates=12), IndexConfig())
    items = torch.randint(0, 40, (5, 10))
    c = rerank_batch(p, items, top=4)
    assert all(x.shape == (5, 4) for x in c) and bool((c.ids >= 2).all())
    assert bool(torch.isnan(c.q).all()) and bool((c.final[:, :-1] >= c.final[:, 1:]).all())
    _, ref = ExactIndex(tower.item_table()).search(tower.user(items), 12)
    assert all(set(a.tolist()) <= set(b.tolist()) for a, b in zip(c.ids, ref))  # re-ranked from the candidates
    with pytest.raises(ConfigError, match="no Q head"):
        build_pipeline(tower, learner, RerankConfig(w_q=1.0), IndexConfig())


@pytest.mark.skipif(importlib.util.find_spec("faiss") is None,
                    reason="faiss-cpu is not installed (the optional extra: pip install 'seqrec[ann]')")
def test_faiss_flat_pipeline_gives_the_exact_pipeline():
    learner, tower = _fixture_models()
    items = torch.randint(2, 40, (8, 10))  # real items last: an empty history's state (zero at init) ties all
    a = rerank_batch(build_pipeline(tower, learner, RerankConfig(candidates=10), IndexConfig()), items)
    b = rerank_batch(build_pipeline(tower, learner, RerankConfig(candidates=10),
                                   IndexConfig(kind="faiss", faiss_type="flat")), items)
    assert torch.equal(a.ids, b.ids)
    torch.testing.assert_close(a.final, b.final, rtol=1e-4, atol=1e-4)


RUN = """
[encoder]
dim = 16
[head]
variant = "sqn"
[train]
batch_size = 32
max_steps = 20
eval_every = 10
[retrieval]
enabled = true
max_steps = 20
eval_every = 10
batch_size = 32
random_negatives = 4
user_categorical = ["user_segment"]
item_categorical = ["item_category"]
item_numeric = ["value"]
[rerank]
candidates = 15
w_sup = 1.0
w_q = 0.5
w_tt = 0.2
"""


def test_train_then_evaluate_with_the_pipeline_keeps_metrics_json_shape(data, tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text(RUN)
    plain, out = tmp_path / "plain", tmp_path / "run"
    assert main(["train", "--config", str(config), "--data", str(data), "--out", str(plain),
                 "--set", "retrieval.enabled=false"]) == 0
    assert not (plain / "retrieval").exists() and "retrieval" not in json.loads((plain / "config.json").read_text())
    assert main(["evaluate", "--run", str(plain)]) == 0
    assert set(json.loads((plain / "metrics.json").read_text())) == {"test", "popularity", "recent", "checkpoint"}
    assert main(["evaluate", "--run", str(plain), "--pipeline"]) == 2  # asked for, but no retrieval model

    assert main(["train", "--config", str(config), "--data", str(data), "--out", str(out)]) == 0
    # resuming a finished run is accepted (config.json's lists equal the config's tuples) and changes nothing
    assert main(["train", "--config", str(config), "--data", str(data), "--out", str(out), "--resume"]) == 0
    tower = json.loads((out / "retrieval" / "checkpoints" / "best.json").read_text())
    assert tower["select_metric"] == "all/recall@100"
    assert main(["evaluate", "--run", str(out), "--split", "valid", "--no-pipeline"]) == 0
    assert set(json.loads((out / "metrics.json").read_text())) == {"valid", "popularity", "recent", "checkpoint"}
    assert main(["evaluate", "--run", str(out), "--split", "test"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"valid", "test", "popularity", "recent", "checkpoint", "pipeline", "recall",
                            "pipeline_info"}
    assert metrics["test"].keys() == metrics["pipeline"]["test"].keys()
    keys = {"hr@5", "ndcg@5", "hr@10", "ndcg@10", "hr@20", "ndcg@20", "count"}
    assert set(metrics["test"]["view"]) == keys | {"repeat", "explore"}
    assert metrics["pipeline"]["test"]["view"].keys() == metrics["test"]["view"].keys()
    assert metrics["pipeline"]["test"]["view"]["repeat"].keys() == keys
    assert metrics["recall"]["test"]["all"]["count"] == metrics["test"]["view"]["count"] + sum(
        metrics["test"][e]["count"] for e in ("like", "cart", "purchase") if e in metrics["test"])
    info = metrics["pipeline_info"]["test"]
    assert info["candidates"] == 15 and info["states_per_s_full"] > 0 and info["states_per_s_pipeline"] > 0
    assert "| pipeline view |" in capsys.readouterr().out

    p, cfg = load_pipeline(out)  # what batch scoring loads
    assert cfg.rerank.w_q == 0.5 and p.tower.user_spec.columns == ("user_segment",)
    c = rerank_batch(p, torch.from_numpy(np.asarray(load_transitions(data, "test")["state"][:7], np.int64)),
                    p.tower.user_spec.encode({"user_segment": ["bargain_hunter"] * 7}), top=3)
    assert c.ids.shape == (7, 3) and bool(torch.isfinite(c.q).all())


def test_retrieval_config_errors(data, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(RUN)
    with pytest.raises(ConfigError, match=r"unknown key retrieval.negatives"):
        load_run_config(config, ["retrieval.negatives=3"], str(data))
    with pytest.raises(ConfigError, match="needs a Q head"):
        load_run_config(config, ["head.variant='ce'"], str(data))
    d3 = tmp_path / "d3.toml"
    d3.write_text(RUN.replace('[head]\nvariant = "sqn"\n', "").replace("w_q = 0.5", "w_q = 0.0"))
    with pytest.raises(ConfigError, match="needs our own learner"):
        load_run_config(d3, ["algorithm=d3rlpy.dqn"], str(data))
    with pytest.raises(ConfigError, match="retrieval.dim = 8 differs"):
        load_run_config(config, ["retrieval.dim=8"], str(data))
    assert load_run_config(config, ["retrieval.dim=8", "retrieval.init='random'"], str(data)).retrieval.dim == 8


def test_pipeline_table_script_smoke(data, tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "experiments" / "pipeline_table.py"), "--data", str(data),
                          "--out", str(tmp_path / "runs"), "--steps", "10", "--retrieval-steps", "10",
                          "--set", "encoder.dim=8", "--set", "train.batch_size=32",
                          "--set", "retrieval.batch_size=32", "--candidates", "10,20", "--index", "exact"],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    table = (tmp_path / "runs" / "table.md").read_text()
    assert "| full catalogue |" in table and "| exact | 20 |" in table and table in out.stdout
