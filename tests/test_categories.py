"""Item categories as a side feature of the encoders ([encoder] categories): the codes read from a prepared log,
id + category rows, and a log where only the category can tell the next item (it was never a target in training)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from seqrec.datasets.features import FeatureError, item_category_codes
from seqrec.rl.qlearning.learner import Learner
from seqrec.rl.qlearning.losses import HeadConfig
from synthetic_data import prepared_log

from seqrec.core.config import ConfigError
from seqrec.models.encoders import PAD, EncoderConfig, build_encoder
from seqrec.runs.config import run_config

CATS, PER = 20, 10  # the log where only the category tells the next item: 20 categories of 10 items
CODES = torch.cat([torch.zeros(2, dtype=torch.long), torch.arange(CATS * PER) // PER + 1])  # (I,) codes


def category_pairs(rng: np.random.Generator, n: int, seen: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """n (window, next item) pairs: an item, then another of its category, among the category's first 5 items
    (seen: the training targets) or its last 5 (never a training target)."""
    c = rng.integers(0, CATS, n)
    first = c * PER + rng.integers(0, PER, n) + 2
    nxt = c * PER + (rng.integers(0, 5, n) if seen else rng.integers(5, PER, n)) + 2
    return torch.tensor(np.stack([np.zeros(n, int), first], 1)), torch.tensor(nxt)


def test_codes_by_hand(tmp_path):
    """Codes 1..K in sorted category order; an item's most frequent category (ties: the smallest); 0 elsewhere."""
    pd.DataFrame({"item": [2, 2, 2, 3, 4, 4, 5, 1],
                  "item_category": ["b", "a", "b", "c", None, "a", None, "z"]}).to_parquet(tmp_path / "events.parquet")
    codes = item_category_codes(tmp_path, 7)
    # levels among the catalogue's real items: a, b, c (OOV's z is not one of them) -> 1, 2, 3
    assert codes.tolist() == [0, 0, 2, 3, 1, 0, 0]
    pd.DataFrame({"item": [2, 3]}).to_parquet(tmp_path / "events.parquet")
    with pytest.raises(FeatureError, match="no item_category column"):
        item_category_codes(tmp_path, 7)


@pytest.mark.parametrize("kind", ["sasrec", "gru"])
def test_an_items_row_is_its_own_plus_its_categorys(kind):
    torch.manual_seed(0)
    enc = build_encoder(EncoderConfig(kind=kind, num_items=8, max_len=4, dim=6, dropout=0.0, categories=3))
    enc.set_item_categories(torch.tensor([0, 0, 1, 1, 2, 2, 0, 1]))
    with torch.no_grad():
        enc.cat_emb.weight[1:] = torch.randn(2, 6)
    ids, cats = enc.item_emb.weight, enc.cat_emb.weight
    torch.testing.assert_close(enc.output_weight[2], ids[2] + cats[1])
    torch.testing.assert_close(enc.output_weight[5], ids[5] + cats[2])
    torch.testing.assert_close(enc.output_weight[6], ids[6])  # no category: the id row alone
    assert enc.output_weight[PAD].abs().sum() == 0
    window = torch.tensor([[0, 2, 4, 7]])
    torch.testing.assert_close(enc.embed(window)[0], enc.input_weight[window[0]])
    # the category reaches the state: moving category 1's row changes the encoding of a window holding item 2
    before = enc.encode(window)
    with torch.no_grad():
        enc.cat_emb.weight[1] += torch.randn(6)  # not a constant shift: layer norms remove those
    assert not torch.allclose(enc.encode(window), before)
    with pytest.raises(ValueError, match="category codes must be"):
        enc.set_item_categories(torch.tensor([0, 0, 1, 1, 2, 3, 0, 1]))


def test_categories_are_off_by_default_and_checked():
    assert build_encoder(EncoderConfig(num_items=5)).cat_emb is None
    with pytest.raises(ValueError, match="resolved to the prepared data's count"):
        EncoderConfig(num_items=5, categories=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="categories"):
        EncoderConfig(num_items=5, categories=-1)


def test_the_category_finds_next_items_never_seen_as_targets():
    """20 categories of 10 items; after an item comes another of its category. Training targets are the first 5
    items of each category only, so the last 5 are never a target: without categories the model cannot place
    them (HR@10 near 0), with categories their category's row ranks them among its 10 items."""
    codes = CODES
    rng = np.random.default_rng(0)

    def pairs(n: int, seen: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return category_pairs(rng, n, seen)

    def hr10(with_categories: bool) -> float:
        torch.manual_seed(0)
        enc = EncoderConfig(num_items=CATS * PER + 2, max_len=2, dim=16, dropout=0.0,
                            categories=CATS + 1 if with_categories else 0)
        model = Learner(enc, HeadConfig(), lr=0.01)
        if with_categories:
            model.set_item_categories(codes)
        for step in range(300):
            s, a = pairs(64, seen=True)
            model.update({"state": s, "action": a}, step, 0)
        model.eval()
        s, a = pairs(2000, seen=False)
        with torch.no_grad():
            top = model.scores(s).topk(10, dim=1).indices
        return float((top == a.unsqueeze(1)).any(1).float().mean())

    without, with_ = hr10(False), hr10(True)
    assert without < 0.05
    assert with_ > 0.5


def test_run_file_categories_true_reads_the_count_from_the_prepared_log(tmp_path):
    data = prepared_log(tmp_path)
    cfg = run_config({"encoder": {"categories": True, "dim": 8}}, data=str(data))
    codes = item_category_codes(data, cfg.encoder.num_items)
    assert cfg.encoder.categories == int(codes.max()) + 1 > 2
    assert cfg.to_dict()["encoder"]["categories"] == cfg.encoder.categories
    assert "categories" not in run_config({"encoder": {"dim": 8}}, data=str(data)).to_dict()["encoder"]
    with pytest.raises(ConfigError, match="categories applies to algorithm"):
        run_config({"algorithm": "d3rlpy.dqn", "encoder": {"categories": True}}, data=str(data))


# ------------------------------------------------- the mixture's category component ([head] copy_category)


def test_category_component_by_hand_and_the_mixture_stays_a_distribution():
    """p = g copy + (1 - g)(h w(c(i)) p(i | c(i)) + (1 - h) softmax): w the copy attention summed by category and
    renormalised over positions with one, p(i | c) the add-one smoothed target counts within c."""
    from seqrec.models.repeat import CopyMixer, mix_all

    torch.manual_seed(0)
    n = 10
    codes = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 3, 0])  # item 9 has no category
    counts = torch.tensor([0, 0, 4, 0, 1, 2, 2, 0, 0, 5.0])
    mixer = CopyMixer(6, 4, num_items=n)
    mixer.set_within(counts, codes)
    within = torch.tensor([0, 0, 5 / 8, 1 / 8, 2 / 8, 3 / 6, 3 / 6, 1 / 2, 1 / 2, 0])
    torch.testing.assert_close(mixer.log_within.exp(), within)
    items, state = torch.randn(n, 6), torch.randn(2, 6)
    window = torch.tensor([[0, 3, 5, 9], [0, 0, 0, 9]])  # categories 1, 2 and none; only an item without one
    cs = mixer.attend(state, window, items[window], codes, 4)
    logits = state @ items.T
    mixed = mix_all(cs, logits)
    torch.testing.assert_close(mixed.exp().sum(1), torch.ones(2))
    g = torch.sigmoid(mixer.gate(state).squeeze(1))
    h = torch.sigmoid(mixer.cat_gate(state).squeeze(1))
    cat = torch.softmax(logits, 1)
    attn = cs.log_attn.exp()[0]  # positions 1, 2, 3 hold items 3, 5, 9
    w1, w2 = attn[1] / (attn[1] + attn[2]), attn[2] / (attn[1] + attn[2])  # item 9's mass has no category
    torch.testing.assert_close(mixed[0, 2].exp(), (1 - g[0]) * (h[0] * w1 * within[2] + (1 - h[0]) * cat[0, 2]))
    torch.testing.assert_close(mixed[0, 6].exp(), (1 - g[0]) * (h[0] * w2 * within[6] + (1 - h[0]) * cat[0, 6]))
    torch.testing.assert_close(mixed[0, 7].exp(), (1 - g[0]) * (1 - h[0]) * cat[0, 7])  # category 3 not browsed
    # no category in the window: the component is off, g copy + (1 - g) softmax as without it
    torch.testing.assert_close(mixed[1, 4].exp(), (1 - g[1]) * cat[1, 4])


def test_category_component_needs_categories_and_copy():
    with pytest.raises(ValueError, match="copy_category applies with copy = true only"):
        HeadConfig(copy_category=True)
    with pytest.raises(ValueError, match=r"copy_category needs item categories"):
        Learner(EncoderConfig(num_items=10), HeadConfig(copy=True, copy_category=True), lr=0.01)


def test_the_category_component_proposes_never_seen_items_of_the_browsed_category():
    """The log of test_the_category_finds_next_items_never_seen_as_targets, with the mixture and its category
    component: the held-out next items (never targets) are found through their category's popularity."""
    codes = CODES
    rng = np.random.default_rng(0)

    def pairs(n: int, seen: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return category_pairs(rng, n, seen)

    torch.manual_seed(0)
    enc = EncoderConfig(num_items=CATS * PER + 2, max_len=2, dim=16, dropout=0.0, categories=CATS + 1)
    model = Learner(enc, HeadConfig(copy=True, copy_aux=1.0, copy_category=True), lr=0.01)
    model.set_item_categories(codes)
    s, a = pairs(4000, seen=True)
    model.set_item_counts(torch.bincount(a, minlength=CATS * PER + 2))
    for step in range(100):
        model.update({"state": s[step * 40:(step + 1) * 40], "action": a[step * 40:(step + 1) * 40]}, step, 0)
    model.eval()
    s, a = pairs(2000, seen=False)
    with torch.no_grad():
        top = model.scores(s).topk(10, dim=1).indices
    assert float((top == a.unsqueeze(1)).any(1).float().mean()) > 0.8  # the 10 items of the category: all of them


def test_categories_auto_follows_the_log(tmp_path):
    """"auto": the count on a log with categories; 0 and no category component on one without (the recommended
    configs run on both)."""
    data = prepared_log(tmp_path)
    auto = run_config({"encoder": {"categories": "auto", "dim": 8}, "head": {"copy": True, "copy_category": True}},
                      data=str(data))
    assert auto.encoder.categories == int(item_category_codes(data, auto.encoder.num_items).max()) + 1
    assert auto.head.copy_category
    events = pd.read_parquet(data / "events.parquet").drop(columns=["item_category"])
    events.to_parquet(data / "events.parquet")
    bare = run_config({"encoder": {"categories": "auto", "dim": 8}, "head": {"copy": True, "copy_category": True}},
                      data=str(data))
    assert bare.encoder.categories == 0 and not bare.head.copy_category
    assert bare.to_dict() == run_config({"encoder": {"dim": 8}, "head": {"copy": True}}, data=str(data)).to_dict()
    with pytest.raises(ConfigError, match="categories = true: .*no item_category column"):
        run_config({"encoder": {"categories": True}}, data=str(data))


def test_category_rule_by_hand():
    """The window newest first, then the browsed categories' items (newest category first, by popularity), then
    the rest by popularity; padding and OOV never."""
    from seqrec.training.evaluation import category_scorer

    codes = np.array([0, 0, 1, 1, 1, 2, 2, 3, 3, 0])
    train = np.array([2, 2, 4, 5, 6, 6, 6, 7, 9, 9, 9, 9])  # counts: 2:2 4:1 5:1 6:3 7:1 9:4
    score = category_scorer(train, 10, codes, torch.device("cpu"))
    out = score(torch.tensor([[0, 3, 5, 3]]))  # window newest first: 3, 5; categories newest first: 1 (item 3), 2
    order = out[0].argsort(descending=True).tolist()
    # 3, 5 (window); category 1 (newest): 2 (count 2), 4 (1); category 2: 6 (3); then the rest: 9 (4), 7 (1), 8 (0)
    assert order[:8] == [3, 5, 2, 4, 6, 9, 7, 8]
    assert out[0, 0] < 0 and out[0, 1] < 0


def test_a_run_with_categories_restores_from_its_checkpoint_and_is_evaluated_beside_the_category_rule(tmp_path):
    """seqrec train with categories = true and the category component; the checkpoint alone restores the codes
    and the within-category popularity; seqrec evaluate puts the category rule beside the model."""
    from seqrec.runs.config import load_run_config
    from seqrec.runs.evaluate import evaluate_run
    from seqrec.runs.learner import build_learner
    from seqrec.runs.train import train
    from seqrec.training.checkpoints import load_checkpoint

    data = prepared_log(tmp_path)
    (tmp_path / "run.toml").write_text('[encoder]\ndim = 8\ncategories = true\n[head]\ncopy = true\n'
                                       'copy_aux = 1.0\ncopy_category = true\n[train]\nmax_steps = 20\n'
                                       'eval_every = 10\nbatch_size = 32\n')
    cfg = load_run_config(tmp_path / "run.toml", [], str(data))
    train(cfg, tmp_path / "run", progress=False)
    loaded = build_learner(cfg, torch.device("cpu"))
    loaded.load_state_dict(load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt", torch.device("cpu"))["model"])
    codes = torch.from_numpy(item_category_codes(data, cfg.encoder.num_items))
    assert torch.equal(loaded.nets[0].encoder.item_category, codes)
    assert torch.isfinite(loaded.nets[0].copy.log_within[codes > 0]).all()
    metrics = evaluate_run(tmp_path / "run")
    assert set(metrics["recent_category"]["test"]) == set(metrics["recent"]["test"])
