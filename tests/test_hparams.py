"""TensorBoard's HParams dashboard: `seqrec train` writes the run's hyper-parameters and final metrics into its
own tb/ folder (one row per run), beside the text table and the scalars; a resumed run ends with one entry."""

import json
from pathlib import Path

import pytest
from seqrec.datasets.adapters import source_spec
from seqrec.datasets.prepare import PrepareConfig, prepare
from seqrec.datasets.synthetic import SyntheticConfig, write_events
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.hparams import metadata

from seqrec.cli.main import main
from seqrec.training.loop import flat_hparams

CONFIG = """
[encoder]
kind = "gru"
dim = 8

[head]
variant = "ce"

[train]
batch_size = 32
lr = 0.02
max_steps = 6
eval_every = 3
log_every = 3
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    write_events(SyntheticConfig(users=60, items=20, seed=5), d / "events.parquet")
    prepare([d / "events.parquet"], lambda p: source_spec("events", p), PrepareConfig(), d / "prepared")
    return d / "prepared"


def _train(tmp_path: Path, data: Path, out: Path, *extra: str) -> int:
    config = tmp_path / "run.toml"
    config.write_text(CONFIG)
    return main(["train", "--config", str(config), "--data", str(data), "--out", str(out), "--no-progress", *extra])


def _hparams(tb: Path) -> tuple[EventAccumulator, dict, dict, int]:
    """The accumulator of tb/, the session's hparams, the hparams plugin's tags and the number of session start
    entries in the folder's events."""
    acc = EventAccumulator(str(tb))
    acc.Reload()
    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    values = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
    n_starts = sum(v.tag == metadata.SESSION_START_INFO_TAG for f in sorted(tb.iterdir())
                   for event in EventFileLoader(str(f)).Load() for v in event.summary.value)
    return acc, values, content, n_starts


def test_train_writes_hparams_and_final_metrics_into_its_own_tb_folder(tmp_path, data):
    out = tmp_path / "run"
    assert _train(tmp_path, data, out) == 0
    assert [p.name for p in (out / "tb").iterdir() if p.is_dir()] == []  # no add_hparams subfolder
    acc, hparams, content, n_starts = _hparams(out / "tb")
    # a session that ended; no experiment summary, so TensorBoard computes the columns from every run
    assert n_starts == 1 and set(content) == {metadata.SESSION_START_INFO_TAG, metadata.SESSION_END_INFO_TAG}
    assert hparams["train.lr"] == pytest.approx(0.02) and hparams["encoder.kind"] == "gru"
    assert hparams["train.max_steps"] == 6 and hparams["head.variant"] == "ce" and hparams["algorithm"] == "seqrec"
    last = json.loads((out / "checkpoints" / "last.json").read_text())
    best = json.loads((out / "checkpoints" / "best.json").read_text())
    expected = {f"metrics/{ev}_{m}": v for ev, row in last["valid"].items() for m, v in row.items() if m != "count"}
    assert "metrics/purchase_ndcg@10" in expected and "metrics/view_hr@10" in expected
    # the dashboard's metric columns: each scalar tag's last value
    final = {t: acc.Scalars(t)[-1] for t in [*expected, "best/value", "best/step"]}
    for tag, value in expected.items():
        assert final[tag].step == 6 and final[tag].value == pytest.approx(value, rel=1e-6), tag
    assert final["best/value"].value == pytest.approx(best["value"], rel=1e-6)
    assert final["best/step"].value == best["step"]
    # the existing text table and scalars are still there
    assert "hyperparameters/text_summary" in acc.Tags()["tensors"]
    assert {"loss/ce", "perf/samples_per_s", "metrics/purchase_hr@10"} <= set(acc.Tags()["scalars"])


def test_a_resumed_run_ends_with_one_hparams_entry(tmp_path, data):
    out = tmp_path / "run"
    assert _train(tmp_path, data, out, "--set", "train.max_steps=3") == 0  # as if killed after step 3
    for p in (out / "tb").iterdir():  # ... before the end wrote its hparams: keep the events up to step 3
        p.unlink()
    assert _train(tmp_path, data, out, "--set", "train.max_steps=3") == 2  # a new run refuses the folder
    (out / "config.json").unlink()
    assert _train(tmp_path, data, out, "--resume") == 0
    acc, hparams, _, n_starts = _hparams(out / "tb")
    assert n_starts == 1 and hparams["train.max_steps"] == 6
    last = json.loads((out / "checkpoints" / "last.json").read_text())
    assert last["step"] == 6
    assert acc.Scalars("metrics/purchase_ndcg@10")[-1].value == pytest.approx(last["valid"]["purchase"]["ndcg@10"])
    # resuming the finished run trains nothing and adds no second entry
    assert _train(tmp_path, data, out, "--resume") == 0
    assert _hparams(out / "tb")[3] == 1


def test_flat_hparams_flattens_tables_and_stringifies_the_rest():
    assert flat_hparams({"a": {"x": 1, "y": [1, 2], "z": {"w": None}}, "b": True, "c": 0.5, "d": (3,)}) == {
        "a.x": 1, "a.y": "[1, 2]", "a.z.w": "None", "b": True, "c": 0.5, "d": "(3,)"}
