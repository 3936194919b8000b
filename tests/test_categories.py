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
    cats, per = 20, 10
    items = np.arange(cats * per) + 2  # real items 2.. ; category of item i: (i - 2) // per + 1
    codes = torch.zeros(cats * per + 2, dtype=torch.long)
    codes[2:] = torch.from_numpy((items - 2) // per + 1)
    rng = np.random.default_rng(0)

    def pairs(n: int, seen: bool) -> tuple[torch.Tensor, torch.Tensor]:
        c = rng.integers(0, cats, n)
        first = c * per + rng.integers(0, per, n) + 2
        nxt = c * per + (rng.integers(0, 5, n) if seen else rng.integers(5, per, n)) + 2
        return torch.tensor(np.stack([np.zeros(n, int), first], 1)), torch.tensor(nxt)

    def hr10(with_categories: bool) -> float:
        torch.manual_seed(0)
        enc = EncoderConfig(num_items=cats * per + 2, max_len=2, dim=16, dropout=0.0,
                            categories=cats + 1 if with_categories else 0)
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
