"""Two-tower retrieval: in-batch softmax and log-Q correction on hand-computed cases, collisions, feature
encodings, the start from the learner, training outputs and exact resume."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from seqrec.rl.qlearning.learner import Learner
from seqrec.rl.qlearning.losses import HeadConfig
from synthetic_data import prepared_log

import seqrec.retrieval.tower_training as tt
from seqrec.core.config import ConfigError
from seqrec.models.encoders import EncoderConfig
from seqrec.retrieval.config import TwoTowerConfig
from seqrec.retrieval.features import FeatureSpec, item_rows, session_rows
from seqrec.retrieval.tower_training import train_two_tower
from seqrec.retrieval.two_tower import TwoTower, in_batch_softmax_loss, load_two_tower, log_q


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    return prepared_log(d)


# Three users and their positives, D = 2, temperature 0.5: logits = user . item / 0.5
USER = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
POS = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, -1.0]])
LOGITS = [[2.0, 0.0, 2.0], [0.0, 4.0, -2.0], [2.0, 4.0, 0.0]]  # by hand


def ce(row: list[float], target: int) -> float:
    return math.log(sum(math.exp(x) for x in row)) - row[target]


def test_in_batch_softmax_is_the_hand_computed_cross_entropy():
    loss = in_batch_softmax_loss(USER, POS, torch.tensor([5, 6, 7]), temperature=0.5)
    expected = sum(ce(LOGITS[b], b) for b in range(3)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_log_q_correction_by_hand():
    item_prob = torch.zeros(10)
    item_prob[[5, 6, 7]] = torch.tensor([0.5, 0.25, 0.25])  # shares of training actions
    lq = log_q(torch.tensor([5, 6, 7]), item_prob, batch_size=3, random_negatives=0)
    # log E[count among a row's 2 in-batch negatives] = log(2 q)
    assert lq.tolist() == pytest.approx([math.log(1.0), math.log(0.5), math.log(0.5)])
    loss = in_batch_softmax_loss(USER, POS, torch.tensor([5, 6, 7]), 0.5, pos_log_q=lq)
    corrected = [[x - c for x, c in zip(row, [0.0, math.log(0.5), math.log(0.5)])] for row in LOGITS]
    assert loss.item() == pytest.approx(sum(ce(corrected[b], b) for b in range(3)) / 3, rel=1e-6)
    # in-batch only, log((B - 1) q) is log q plus a constant: the same loss as subtracting log q itself
    plain = in_batch_softmax_loss(USER, POS, torch.tensor([5, 6, 7]), 0.5, pos_log_q=item_prob[[5, 6, 7]].log())
    assert plain.item() == pytest.approx(loss.item(), rel=1e-6)
    # the correction lowers the popular item's logits relative to the rare ones: row 1's loss falls
    assert ce(corrected[1], 1) < ce(LOGITS[1], 1)


def test_same_item_collisions_are_masked_but_the_own_positive_stays():
    ids = torch.tensor([5, 5, 7])  # rows 0 and 1 share their positive
    loss = in_batch_softmax_loss(USER, POS, ids, temperature=0.5)
    rows = [[LOGITS[0][0], LOGITS[0][2]], [LOGITS[1][1], LOGITS[1][2]], LOGITS[2]]  # column of the twin dropped
    expected = (ce(rows[0], 0) + ce(rows[1], 0) + ce(rows[2], 2)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_random_negatives_with_the_mixed_log_q_by_hand():
    item_prob = torch.zeros(12)  # I = 12: 10 real items
    item_prob[[5, 6, 7]] = torch.tensor([0.5, 0.25, 0.25])
    neg = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    neg_ids = torch.tensor([9, 6])  # item 6 is row 1's positive: masked there, a negative elsewhere
    lq_pos = log_q(torch.tensor([5, 6, 7]), item_prob, 3, 2)
    lq_neg = log_q(neg_ids, item_prob, 3, 2)
    u = 2 / 10  # M / (I - 2) uniform draws
    assert lq_pos.tolist() == pytest.approx([math.log(1.0 + u), math.log(0.5 + u), math.log(0.5 + u)])
    assert lq_neg.tolist() == pytest.approx([math.log(u), math.log(0.5 + u)])
    loss = in_batch_softmax_loss(USER, POS, torch.tensor([5, 6, 7]), 0.5, lq_pos, neg, neg_ids, lq_neg)
    corr = [math.log(1.0 + u), math.log(0.5 + u), math.log(0.5 + u), math.log(u), math.log(0.5 + u)]
    neg_logits = [[2.0, 0.0], [2.0, 2.0], [4.0, 2.0]]  # user . neg / 0.5
    rows = [[x - c for x, c in zip(LOGITS[b] + neg_logits[b], corr)] for b in range(3)]
    del rows[1][4]  # row 1's random negative is its own positive item
    assert loss.item() == pytest.approx(sum(ce(rows[b], b) for b in range(3)) / 3, rel=1e-6)


def test_feature_spec_encodes_unknown_and_missing_and_round_trips_json():
    frame = pd.DataFrame({"seg": ["a", "b", "a", None], "age": [20.0, 30.0, np.nan, 40.0]})
    spec = FeatureSpec.fit(frame, ["seg"], ["age"])
    assert spec.categorical == (("seg", ("a", "b")),) and spec.cardinalities == (3,)
    (col, mean, std), = spec.numeric
    assert (mean, std) == pytest.approx((30.0, math.sqrt(200 / 3)))
    f = spec.encode({"seg": ["b", "zzz", None], "age": [30.0, None, 40.0]})
    assert f.categorical[:, 0].tolist() == [2, 0, 0]  # unseen and missing -> unknown 0
    assert f.numeric[:, 0].tolist() == pytest.approx([0.0, 0.0, 10 / std])  # missing -> the mean
    assert FeatureSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert spec.encode({}, 2).categorical.tolist() == [[0], [0]]  # absent column: all unknown


def test_item_rows_take_the_mode_and_the_mean_and_sessions_their_first_event():
    events = pd.DataFrame({"session": [1, 1, 0, 0, 0], "position": [1, 0, 0, 1, 2], "item": [2, 2, 2, 3, 3],
                           "split": ["train"] * 5, "cat": ["x", "y", "y", "z", None],
                           "price": [1.0, 2.0, 6.0, 5.0, np.nan], "seg": ["late", "early", "s0", "s0b", "s0c"]})
    items = item_rows(events, ["cat"], ["price"], num_items=5)
    assert items.loc[2, "cat"] == "y" and items.loc[3, "cat"] == "z"  # mode; missing values ignored
    assert items.loc[2, "price"] == pytest.approx(3.0) and items.loc[3, "price"] == pytest.approx(5.0)
    assert pd.isna(items.loc[4, "cat"]) and pd.isna(items.loc[0, "price"])
    sessions = session_rows(events, ["seg"])
    assert sessions.loc[1, "seg"] == "early" and sessions.loc[0, "seg"] == "s0"


def test_a_tower_started_from_the_learner_ranks_as_its_supervised_head():
    enc = EncoderConfig(num_items=30, max_len=5, dim=8, dropout=0.0)
    torch.manual_seed(0)
    learner = Learner(enc, HeadConfig(variant="sqn"), lr=0.01).eval()
    spec = FeatureSpec((("seg", ("a", "b")),), (("age", 30.0, 10.0),))
    model = TwoTower(enc, spec, FeatureSpec(), temperature=1.0).eval()
    model.encoder.load_state_dict(learner.nets[0].encoder.state_dict())
    items = torch.tensor([[0, 0, 3, 4, 5], [0, 0, 0, 0, 9]])
    users = spec.encode({"seg": ["a", "b"], "age": [20.0, 50.0]})
    with torch.no_grad():
        scores = model.user(items, users) @ model.item_table().T  # (B, I)
        torch.testing.assert_close(scores, learner.scores(items))  # zero-initialised features add nothing


def train_config(**kw) -> TwoTowerConfig:
    base = dict(enabled=True, init="random", max_steps=20, eval_every=10, log_every=5, batch_size=32, lr=0.01,
                random_negatives=4, user_categorical=("user_segment",), user_numeric=("user_age",),
                item_categorical=("item_category",), item_numeric=("value",))
    return TwoTowerConfig(**{**base, **kw})


def encoder_config(data: Path) -> EncoderConfig:
    m = json.loads((data / "manifest.json").read_text())
    return EncoderConfig(num_items=m["catalogue_size"], max_len=10, dim=16, dropout=0.1)


def test_training_writes_checkpoints_features_and_tensorboard_tags(data, tmp_path):
    out = tmp_path / "retrieval"
    result = train_two_tower(train_config(), encoder_config(data), data, out, device="cpu", progress=False)
    assert result["step"] == 20 and 0.0 <= result["best"] <= 1.0
    assert set(result["valid"]["all"]) == {"recall@50", "recall@100", "recall@200", "count"}
    for name in ("best", "last"):
        state = torch.load(out / "checkpoints" / f"{name}.pt", weights_only=True)
        assert json.loads((out / "checkpoints" / f"{name}.json").read_text())["step"] == state["step"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    assert {"loss/retrieval", "metrics/recall@50", "metrics/recall@100", "metrics/recall@200"} <= set(
        acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("metrics/recall@100")] == [0, 10, 20]  # the starting point too
    model = load_two_tower(out)
    assert model.user_spec.columns == ("user_segment", "user_age")
    assert model.item_cat_codes.shape == (model.enc.num_items, 1) and int(model.item_cat_codes[2:].min()) >= 1
    assert not model.training
    with pytest.raises(ConfigError, match="already holds a retrieval model"):
        train_two_tower(train_config(), encoder_config(data), data, out, device="cpu", progress=False)


def test_a_crash_mid_run_then_resume_ends_with_the_same_weights(data, tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    train_two_tower(train_config(), encoder_config(data), data, whole, device="cpu", progress=False)

    real = tt.step_generator

    def crash_at_13(seed, step, device="cpu"):
        if step == 13:  # after the step-10 checkpoint: steps 11-13 are lost and must be redone identically
            raise KeyboardInterrupt
        return real(seed, step, device)

    crashed = tmp_path / "crashed"
    monkeypatch.setattr(tt, "step_generator", crash_at_13)
    with pytest.raises(KeyboardInterrupt):
        train_two_tower(train_config(), encoder_config(data), data, crashed, device="cpu", progress=False)
    assert torch.load(crashed / "checkpoints" / "last.pt", weights_only=True)["step"] == 10
    monkeypatch.setattr(tt, "step_generator", real)
    train_two_tower(train_config(), encoder_config(data), data, crashed, device="cpu", resume=True, progress=False)
    a = torch.load(whole / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(crashed / "checkpoints" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 20 and a["best_step"] == b["best_step"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    with pytest.raises(ConfigError, match="different \\[retrieval\\] config"):
        train_two_tower(train_config(lr=0.02), encoder_config(data), data, crashed, device="cpu", resume=True)


def test_a_missing_or_non_numeric_feature_column_is_named(data, tmp_path):
    with pytest.raises(ConfigError, match="'colour' is not in .*user_segment"):
        train_two_tower(train_config(item_categorical=("colour",)), encoder_config(data), data, tmp_path / "a",
                        device="cpu")
    with pytest.raises(ConfigError, match="'user_segment' holds"):
        train_two_tower(train_config(user_numeric=("user_segment",), user_categorical=()), encoder_config(data),
                        data, tmp_path / "b", device="cpu")


@pytest.mark.parametrize("kw, message", [
    (dict(init="warm"), "init must be one of"), (dict(temperature=0.0), "temperature must be > 0"),
    (dict(random_negatives=-1), "random_negatives must be"), (dict(user_numeric=("a", "a")), "listed twice"),
])
def test_invalid_retrieval_configs(kw, message):
    with pytest.raises(ValueError, match=message):
        TwoTowerConfig(**kw)
