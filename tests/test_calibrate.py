"""[head] copy_calibrate: the mixture's gate offsets, chosen after training on validation and kept in the best
checkpoint (seqrec/training/calibrate.py)."""

from __future__ import annotations

import json

import pytest
import torch
from seqrec.rl.qlearning.losses import HeadConfig
from synthetic_data import prepared_log

from seqrec.models.repeat import CopyMixer, mix_all
from seqrec.training.calibrate import SHIFTS, choose_shifts


def test_choose_shifts_takes_the_best_pair_and_keeps_the_trained_gates_on_ties():
    seen = []

    def setter(a: float, b: float) -> None:
        seen.append((a, b))

    chosen = choose_shifts(setter, lambda: -(seen[-1][0] - 4.0) ** 2 - (seen[-1][1] - 20.0) ** 2)
    assert chosen["chosen"] == [4.0, 20.0] and chosen["metric"] == 0.0
    assert seen[-1] == (4.0, 20.0)  # left set
    assert len(chosen["grid"]) == len(SHIFTS) ** 2 and chosen["grid"][0][:2] == [0.0, 0.0]
    seen.clear()
    flat = choose_shifts(setter, lambda: 0.5)  # nothing strictly better than the trained gates
    assert flat["chosen"] == [0.0, 0.0] and seen[-1] == (0.0, 0.0)
    seen.clear()
    none = choose_shifts(setter, lambda: None if seen[-1] == (0.0, 0.0) else (1.0 if seen[-1] == (2.0, 8.0) else 0.0))
    assert none["chosen"] == [2.0, 8.0]


def test_the_offsets_move_the_gates_by_hand():
    """logit g + s_g and logit h + s_h: g = sigmoid(w.state + c + s_g), the category's share (1 - g) h."""
    torch.manual_seed(0)
    codes = torch.tensor([0, 0, 1, 1, 2, 2])
    mixer = CopyMixer(4, 3, num_items=6, calibrated=True)
    mixer.set_within(torch.tensor([0, 0, 1, 2, 3, 0.0]), codes)
    state, items = torch.randn(2, 4), torch.randn(6, 4)
    window = torch.tensor([[0, 2, 4], [3, 5, 2]])
    z_g, z_h = mixer.gate(state).squeeze(1), mixer.cat_gate(state).squeeze(1)
    mixer.set_gate_shift(2.0, -3.0)
    cs = mixer.attend(state, window, items[window], codes, 3)
    g, h = torch.sigmoid(z_g + 2.0), torch.sigmoid(z_h - 3.0)
    torch.testing.assert_close(cs.log_gate.exp(), g)
    torch.testing.assert_close(cs.log_cat_gate.exp(), (1 - g) * h)
    torch.testing.assert_close(cs.log_rest.exp(), (1 - g) * (1 - h))
    torch.testing.assert_close(mix_all(cs, state @ items.T).exp().sum(1), torch.ones(2))  # still a distribution
    with pytest.raises(ValueError, match="copy_calibrate"):
        CopyMixer(4, 3, num_items=6).set_gate_shift(1.0, 1.0)
    assert "gate_shift" not in CopyMixer(4, 3, num_items=6).state_dict()  # off: state dicts as before


def test_copy_calibrate_needs_the_category_component():
    with pytest.raises(ValueError, match="copy_calibrate applies with copy_category"):
        HeadConfig(copy=True, copy_calibrate=True)
    HeadConfig(copy=True, copy_category=True, copy_calibrate=True)


def test_a_calibrated_run_keeps_its_chosen_offsets_and_validation_agrees(tmp_path):
    """seqrec train with copy_calibrate: calibration.json holds the grid, the best checkpoint the chosen offsets,
    and the validation metric of that checkpoint is the chosen one; calibrating again changes nothing."""
    from seqrec.datasets.manifest import event_names, load_transitions, read_manifest

    from seqrec.runs.config import load_run_config
    from seqrec.runs.learner import build_learner
    from seqrec.runs.train import train
    from seqrec.training.calibrate import calibrate_checkpoint
    from seqrec.training.checkpoints import load_checkpoint
    from seqrec.training.evaluation import evaluate_arrays, selected_metric

    data = prepared_log(tmp_path)
    (tmp_path / "run.toml").write_text('[encoder]\ndim = 8\ncategories = true\n[head]\ncopy = true\n'
                                       'copy_category = true\ncopy_calibrate = true\n[train]\nmax_steps = 20\n'
                                       'eval_every = 10\nbatch_size = 32\n')
    cfg = load_run_config(tmp_path / "run.toml", [], str(data))
    result = train(cfg, tmp_path / "run", progress=False)
    saved = json.loads((tmp_path / "run" / "calibration.json").read_text())
    assert saved == result["calibration"] and len(saved["grid"]) == len(SHIFTS) ** 2
    values = [v for _, _, v in saved["grid"]]
    assert saved["metric"] == max(values)
    best = tmp_path / "run" / "checkpoints" / "best.pt"
    state = load_checkpoint(best, "cpu")["model"]
    assert state["nets.0.copy.gate_shift"].tolist() == saved["chosen"]
    assert json.loads(best.with_suffix(".json").read_text())["calibration"] == saved

    learner = build_learner(cfg, torch.device("cpu"))
    learner.load_state_dict(state)
    learner.eval()
    names = event_names(read_manifest(cfg.data))
    event, metric = cfg.train.select_metric.split("/")

    def valid() -> float | None:
        learner.eval()
        m = evaluate_arrays(learner.scores, load_transitions(cfg.data, "valid"), names, torch.device("cpu"))
        return selected_metric(m, event, metric)

    assert valid() == pytest.approx(saved["metric"])
    again = calibrate_checkpoint(learner, best, valid, "cpu")
    assert again["chosen"] == saved["chosen"] and again["grid"] == saved["grid"]


def test_auto_categories_on_a_log_without_them_drop_the_calibration(tmp_path):
    """The recommended configs set copy_calibrate beside copy_category: on a log without categories both go, and
    the resolved config is the plain mixture's (YooChoose's runs are unchanged)."""
    import pandas as pd

    from seqrec.runs.config import run_config

    data = prepared_log(tmp_path)
    head = {"copy": True, "copy_category": True, "copy_calibrate": True}
    assert run_config({"encoder": {"categories": "auto"}, "head": head}, data=str(data)).head.copy_calibrate
    pd.read_parquet(data / "events.parquet").drop(columns=["item_category"]).to_parquet(data / "events.parquet")
    bare = run_config({"encoder": {"categories": "auto", "dim": 8}, "head": head}, data=str(data))
    assert not bare.head.copy_category and not bare.head.copy_calibrate
    assert bare.to_dict() == run_config({"encoder": {"dim": 8}, "head": {"copy": True}}, data=str(data)).to_dict()


def test_seqrec_train_reports_the_chosen_offsets(tmp_path, capsys):
    from seqrec.cli.main import main

    data = prepared_log(tmp_path)
    (tmp_path / "run.toml").write_text('[encoder]\ndim = 8\ncategories = true\n[head]\ncopy = true\n'
                                       'copy_category = true\ncopy_calibrate = true\n[train]\nmax_steps = 10\n'
                                       'eval_every = 10\nbatch_size = 32\n')
    assert main(["train", "--config", str(tmp_path / "run.toml"), "--data", str(data),
                 "--out", str(tmp_path / "run")]) == 0
    chosen = json.loads((tmp_path / "run" / "calibration.json").read_text())["chosen"]
    assert f"offsets (copy, category) = {tuple(chosen)}" in capsys.readouterr().out
