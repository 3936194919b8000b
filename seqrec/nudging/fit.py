"""The run's nudge bandit: fitted offline at the end of `seqrec train` from the training split's logged nudges
and saved with the run (RUN/bandit.json + bandit.npz), so `seqrec score` draws every nudge from it.

Why at train time: the run folder is then complete and read-only for scoring (several scoring jobs, or Ray
actors, never race to write it), and the bandit is fitted on the same sessions as the learner (the train
split). How: one decision per nudged event (seqrec.nudging.catalogue.nudge_decisions, rewarded by the best event that
followed on that item, with the prepared data's event rewards), fitted with `fit_offline` by importance
weighting when every decision logged its propensity (vectorised: millions of rows in a second), else by
replay. The bandit is the run's [bandit] (by default the paper's epsilon-greedy, epsilon 0.1) seeded by the
run's train.seed.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from seqrec.datasets.manifest import read_manifest
from seqrec.nudging.catalogue import load_catalogue, nudge_decisions
from seqrec.rl.bandits.fit import fit_offline, save_bandit
from seqrec.rl.bandits.policies import BanditConfig

COLUMNS = ("session", "item_id", "event_type", "timestamp", "nudge_id", "propensity", "split")


def fit_run_bandit(data: str | Path, run: Path, seed: int = 0, catalogue: str | Path | None = None,
                   config: BanditConfig | None = None) -> dict | None:
    """Fit and save RUN/bandit.{json,npz} from the prepared data's training split with the bandit `config` (the
    run's [bandit]; None: epsilon-greedy's defaults) seeded by `seed`; writes RUN/bandit_fit.json and returns
    it, or None (nothing written) when the data logged no nudge of the catalogue's arms."""
    events_path = Path(data) / "events.parquet"
    names = pq.read_schema(events_path).names
    if "nudge_id" not in names:
        return None
    table = pq.read_table(events_path, columns=[c for c in COLUMNS if c in names])
    if "split" in table.column_names:
        table = table.filter(pc.equal(table.column("split").cast("string"), "train"))
    rewards = {e["name"]: float(e["reward"]) for e in read_manifest(data)["event_types"]}
    cat = load_catalogue(catalogue)
    decisions = nudge_decisions(table, cat.ids, rewards)
    if not len(decisions.arm):
        return None
    bandit = replace(config or BanditConfig(), seed=seed).create(cat.ids)
    prop = decisions.propensity
    ips = bool(np.isfinite(prop).all() and ((prop > 0) & (prop <= 1)).all())
    fit = fit_offline(bandit, decisions.arm, decisions.reward, prop if ips else None, method="ips" if ips else "replay")
    save_bandit(bandit, run)
    report = {"kind": bandit.config.kind, "method": fit.method, "decisions": fit.rows, "used": fit.used,
              "value": fit.value, "unknown_nudges": dict(decisions.unknown), "arms": list(cat.ids),
              "means": bandit.state_arrays()["mean"].round(6).tolist()}
    (run / "bandit_fit.json").write_text(json.dumps(report, indent=1))
    return report
