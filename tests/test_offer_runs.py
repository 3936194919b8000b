"""The offer learner in runs: `seqrec train` with an [offers] table fits it into RUN/offers when the log carries
offers and says why not otherwise; `seqrec ope` with its folder prints the gate; config.json records the table."""

from __future__ import annotations

import json

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from seqrec.datasets.adapters import source_spec
from seqrec.datasets.prepare import PrepareConfig, prepare
from seqrec.datasets.synthetic import SyntheticConfig, write_events

from seqrec.cli.main import main
from seqrec.core.config import ConfigError
from seqrec.runs.config import load_run_config, saved_config
from seqrec.runs.train import train

RUN = """
[encoder]
kind = "sasrec"
dim = 16

[head]
variant = "ce"

[train]
batch_size = 32
max_steps = 6
eval_every = 3

[offers]
profile = ["user_segment"]
history = 6
dim = 8
hidden = 8
epochs = 2
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("offers")
    log = d / "events.parquet"
    write_events(SyntheticConfig(users=150, items=40, seed=3), log)
    prepare([log], lambda p: source_spec("events", p), PrepareConfig(), d / "data")
    bare = d / "bare.parquet"                                  # the same log without any nudge: no offers
    table = pq.read_table(log)
    pq.write_table(table.filter(pc.is_null(table.column("nudge_id"))), bare)
    prepare([bare], lambda p: source_spec("events", p), PrepareConfig(), d / "bare_data")
    (d / "run.toml").write_text(RUN)
    return {"dir": d, "log": log}


def test_train_fits_the_offer_learner_and_records_the_table(world):
    d = world["dir"]
    result = train(load_run_config(d / "run.toml", [], str(d / "data")), d / "run", progress=False)
    assert result["offers"]["trained"] and result["offers"]["offers"] > 0
    assert (d / "run" / "offers" / "model.pt").exists() and (d / "run" / "offers" / "offers.json").exists()
    note = json.loads((d / "run" / "offers" / "offers.json").read_text())
    assert note["vocab"]["profile"][0][0] == "user_segment" and note["held_out"]
    cfg = saved_config(d / "run")
    assert cfg.offers is not None and cfg.offers.epochs == 2 and cfg.offers.seed == 0
    assert "seed" not in json.loads((d / "run" / "config.json").read_text())["offers"]


def test_a_log_without_offers_keeps_the_next_item_heads_only(world):
    d = world["dir"]
    result = train(load_run_config(d / "run.toml", [], str(d / "bare_data")), d / "bare_run", progress=False)
    assert result["offers"] == {"trained": False,
                                "reason": "the log has no offers: no event carries both a nudge_id and a propensity"}
    assert not (d / "bare_run" / "offers").exists() and (d / "bare_run" / "checkpoints" / "best.pt").exists()


def test_ope_prints_the_gate_of_an_offer_learner(world, capsys):
    d = world["dir"]
    if not (d / "run" / "offers").exists():
        train(load_run_config(d / "run.toml", [], str(d / "data")), d / "run", progress=False)
    assert main(["ope", "--log", str(d / "data"), "--policy", str(d / "run"), "--bootstrap", "50",
                 "--json", str(d / "gate.json")]) == 0
    out = capsys.readouterr().out
    assert "decision: " in out and "the nudge of the logged product" in out   # the synthetic log's products are
    gate = json.loads((d / "gate.json").read_text())["gate"]                  # the customers' own choice
    assert {"estimator", "estimate", "low", "high", "decision"} <= set(gate) and gate["held_out_only"]
    assert gate["decision"] == ("go" if gate["difference"]["low"] > 0 else "no-go")
    assert gate["difference"]["estimate"] == pytest.approx(gate["estimate"] - gate["current"]["estimate"])
    # the current (logged) policy's value is the logged mean reward of the same offers
    assert gate["current"]["low"] <= gate["current"]["estimate"] <= gate["current"]["high"]


def test_offers_table_errors_name_the_key(world):
    d = world["dir"]
    for text, message in (("seed = 3", "offers.seed comes from the run's train.seed"),
                          ("head = \"cubic\"", "offers.head must be one of additive, joint"),
                          ("width = 3", "unknown key offers.width")):
        (d / "bad.toml").write_text(RUN + text + "\n")
        with pytest.raises(ConfigError, match=message):
            load_run_config(d / "bad.toml", [], str(d / "data"))
