"""Event types in the state window ([encoder] events): prepare's state_event.npy, the encoders' and the copy
attention's event rows, the config key, and a log where only the event type tells the next item (the carted one)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from seqrec.datasets.adapters import source_spec
from seqrec.datasets.manifest import event_names, load_transitions, read_manifest
from seqrec.datasets.prepare import PrepareConfig, prepare
from seqrec.datasets.readers import InputError

from seqrec.cli.main import main
from seqrec.core.config import ConfigError
from seqrec.models.encoders import EncoderConfig, build_encoder
from seqrec.models.repeat import CopyMixer
from seqrec.runs.config import run_config, saved_config

VIEWS, ITEMS, W = 5, 40, 5  # a cart session: 5 distinct items viewed, one of them carted, then it is purchased
CART, VIEW = 3, 1  # event codes + 1 of cart and view (codes: view 0, like 1, cart 2, purchase 3)


def write_log(path: Path, rows: list[tuple]) -> Path:
    """(user, session, item, event type) rows, one minute apart in each session, as an events Parquet file."""
    df = pd.DataFrame(rows, columns=["user_id", "session_id", "item_id", "event_type"])
    df["timestamp"] = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(df.groupby("session_id").cumcount(),
                                                                               unit="min")
    df.to_parquet(path)
    return path


def cart_rows(sessions: int, seed: int, only_views: bool = False) -> list[tuple]:
    """Each session views VIEWS distinct items of ITEMS, carting exactly one at a random position, then purchases
    the carted item (with only_views, every event is a view)."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(sessions):
        picks = rng.choice(ITEMS, VIEWS, replace=False) + 100
        k = int(rng.integers(VIEWS))
        for j, item in enumerate(picks):
            rows.append((s, s, int(item), "cart" if j == k and not only_views else "view"))
        rows.append((s, s, int(picks[k]), "view" if only_views else "purchase"))
    return rows


def prepared(folder: Path, rows: list[tuple], window: int = W) -> Path:
    log = write_log(folder / "events.parquet", rows)
    prepare([log], lambda p: source_spec("events", p), PrepareConfig(window=window), folder / "prepared")
    return folder / "prepared"


@pytest.fixture(scope="module")
def cart_data(tmp_path_factory) -> Path:
    return prepared(tmp_path_factory.mktemp("cart"), cart_rows(300, seed=0))


def run_file(folder: Path, events: bool, steps: int = 300) -> Path:
    path = folder / f"run_{events}.toml"
    path.write_text(f'[encoder]\ndim = 16\ndropout = 0.0\nevents = {str(events).lower()}\n[head]\ncopy = true\n'
                    f'copy_aux = 1.0\n[train]\nmax_steps = {steps}\neval_every = {steps}\nbatch_size = 64\n'
                    'lr = 0.01\nselect_metric = "purchase/hr@5"\n')
    return path


def train_run(cart_data: Path, folder: Path, events: bool) -> Path:
    from seqrec.runs.config import load_run_config
    from seqrec.runs.train import train

    torch.set_num_threads(1)
    cfg = load_run_config(run_file(folder, events), [], str(cart_data))
    train(cfg, folder / f"run_{events}", progress=False)
    return folder / f"run_{events}"


@pytest.fixture(scope="module")
def runs(cart_data, tmp_path_factory) -> dict[bool, Path]:
    folder = tmp_path_factory.mktemp("runs")
    return {events: train_run(cart_data, folder, events) for events in (True, False)}


def restored(run: Path):
    from seqrec.runs.learner import build_learner
    from seqrec.training.checkpoints import load_checkpoint

    cfg = saved_config(run)
    learner = build_learner(cfg, torch.device("cpu"))
    learner.load_state_dict(load_checkpoint(run / "checkpoints" / "best.pt", torch.device("cpu"))["model"])
    return learner.eval()


def fresh_windows(n: int, seed: int, num_items: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n windows of VIEWS distinct real items, one position carted: (n, W) items, (n, W) events, (n,) the cart."""
    rng = np.random.default_rng(seed)
    items = np.stack([rng.choice(num_items - 2, VIEWS, replace=False) + 2 for _ in range(n)])
    k = rng.integers(VIEWS, size=n)
    events = np.full((n, VIEWS), VIEW)
    events[np.arange(n), k] = CART
    return torch.from_numpy(items), torch.from_numpy(events), torch.from_numpy(items[np.arange(n), k])


# ------------------------------------------------------------------------------------------- prepare


def test_prepare_writes_event_windows_aligned_with_the_states(tmp_path):
    """Two sessions by hand, window 3: state_event holds each earlier position's event code + 1, 0 where padded."""
    rows = [(1, 1, 10, "view"), (1, 1, 11, "cart"), (1, 1, 12, "view"), (1, 1, 11, "purchase"),
            (2, 2, 20, "like"), (2, 2, 21, "view"), (2, 2, 20, "view")]
    data = prepared(tmp_path, rows, window=3)
    assert read_manifest(data)["format_version"] == 3
    users = pd.read_parquet(data / "sessions.parquet")["user_id"].to_numpy()
    got: dict[int, list] = {}
    for split in ("train", "valid", "test"):
        a = load_transitions(data, split, events=True)
        assert a["state_event"].dtype == np.int8 and a["state_event"].shape == a["state"].shape
        assert ((a["state"] != 0) == (a["state_event"] != 0)).all()  # aligned: an event exactly where an item is
        for s, row in zip(a["session"], a["state_event"], strict=True):
            got.setdefault(int(users[s]), []).append(row.tolist())
    # codes view 0, like 1, cart 2, purchase 3 -> stored + 1
    assert got[1] == [[0, 0, 0], [0, 0, 1], [0, 1, 3], [1, 3, 1]]
    assert got[2] == [[0, 0, 0], [0, 0, 2], [0, 2, 1]]


def test_the_next_states_events_are_derived_as_next_state_is(cart_data):
    from seqrec.training.sampler import to_batch

    a = load_transitions(cart_data, "train", events=True)
    idx = np.arange(len(a["action"]))
    batch = to_batch(a, idx, torch.device("cpu"), events=True)
    nxt, done = batch["next_state_event"].numpy(), a["done"]
    # within a session the next row's state is this row's next state: the same holds for their events
    assert (nxt[:-1][~done[:-1]] == a["state_event"][1:][~done[:-1]]).all()
    assert (nxt[:, -1] == a["event"] + 1).all()
    assert "state_event" not in to_batch(a, idx, torch.device("cpu"))  # off: the batch it always was


# ------------------------------------------------------------------------------------------- the model


@pytest.mark.parametrize("kind", ["sasrec", "gru"])
def test_padding_and_causality_with_events(kind):
    torch.manual_seed(0)
    enc = build_encoder(EncoderConfig(kind=kind, num_items=12, max_len=6, dim=8, dropout=0.0, event_types=5))
    with torch.no_grad():
        enc.event_emb.weight[1:] = torch.randn(4, 8)  # trained rows (they start at zero)
    enc.eval()
    items, events = torch.tensor([[0, 0, 3, 5, 7]]), torch.tensor([[0, 0, 1, 3, 1]])
    short = enc.encode(items[:, 2:], events[:, 2:])
    torch.testing.assert_close(enc.encode(items, events), short)  # pads carry nothing
    torch.testing.assert_close(enc.encode(items, torch.tensor([[4, 2, 1, 3, 1]])), short)  # whatever their events
    # causal: a later position's event changes no earlier state, and does change its own
    later = torch.tensor([[0, 0, 1, 3, 4]])
    torch.testing.assert_close(enc.encode_all(items, later)[:, :4], enc.encode_all(items, events)[:, :4])
    assert not torch.allclose(enc.encode(items, later), enc.encode(items, events))
    with pytest.raises(ValueError, match="needs the window's"):
        enc.encode(items)
    with pytest.raises(ValueError, match="no event types"):
        build_encoder(EncoderConfig(kind=kind, num_items=12, max_len=6, dim=8)).encode(items, events)


def test_event_rows_start_at_zero_and_are_created_only_when_asked():
    torch.manual_seed(0)
    plain = build_encoder(EncoderConfig(num_items=12, max_len=6, dim=8))
    torch.manual_seed(0)
    with_events = build_encoder(EncoderConfig(num_items=12, max_len=6, dim=8, event_types=5))
    assert plain.event_emb is None and set(plain.state_dict()) == set(with_events.state_dict()) - {"event_emb.weight"}
    assert with_events.event_emb.weight.abs().sum() == 0
    plain.eval(), with_events.eval()
    items = torch.tensor([[0, 3, 5, 7]])
    torch.testing.assert_close(with_events.encode(items, torch.tensor([[0, 1, 3, 2]])),
                               with_events.encode(items, torch.tensor([[0, 1, 1, 1]])))  # event-blind at first
    with pytest.raises(ValueError, match="resolved to the prepared data's count"):
        EncoderConfig(num_items=5, event_types=True)  # type: ignore[arg-type]


def test_copy_attention_logits_by_hand():
    """logits_t = (W_q s) . (E[x_t] + R[r_t] + V[e_t]) / sqrt(D) + b[r_t] + a[e_t], over the copyable positions."""
    torch.manual_seed(0)
    mixer = CopyMixer(4, 3, event_types=5)
    with torch.no_grad():
        mixer.event_key.weight[1:] = torch.randn(4, 4)
        mixer.event_bias.copy_(torch.tensor([0.0, 0.5, -1.0, 2.0, 0.25]))
        mixer.recency_bias.copy_(torch.tensor([0.1, 0.2, 0.3]))
    table, state = torch.randn(6, 4), torch.randn(1, 4)
    window, events = torch.tensor([[2, 4, 5]]), torch.tensor([[1, 3, 2]])
    cs = mixer.attend(state, window, table[window], events=events)
    q = mixer.query(state)[0]
    recency = [2, 1, 0]
    logits = torch.stack([
        q @ (table[x] + mixer.recency.weight[r] + mixer.event_key.weight[e]) / 2.0 + mixer.recency_bias[r]
        + mixer.event_bias[e] for x, r, e in zip(window[0].tolist(), recency, events[0].tolist(), strict=True)])
    torch.testing.assert_close(cs.log_attn[0], torch.log_softmax(logits, 0))
    with pytest.raises(ValueError, match="needs the window's"):
        mixer.attend(state, window, table[window])


# ---------------------------------------------------------------------------------- learning and config


def test_only_the_event_type_tells_which_item_is_bought_next(runs):
    """Each session views 5 items, carts one at a random position and buys it next: with events the copy attention
    finds the carted item (HR@1 near 1); without, nothing tells it from the other four (HR@1 near 1/5)."""
    hr1 = {}
    for events, run in runs.items():
        learner = restored(run)
        items, ev, cart = fresh_windows(500, seed=1, num_items=learner.enc.num_items)
        with torch.no_grad():
            scores = learner.scores(items, ev) if events else learner.scores(items)
        hr1[events] = float((scores.argmax(1) == cart).float().mean())
    assert hr1[True] > 0.8
    assert 0.1 < hr1[False] < 0.35


def test_config_json_holds_the_count_and_the_restored_run_scores_the_same(runs, cart_data):
    from seqrec.runs.evaluate import evaluate_run
    from seqrec.training.evaluation import evaluate_arrays

    saved = json.loads((runs[True] / "config.json").read_text())
    assert saved["encoder"]["event_types"] == len(event_names(read_manifest(cart_data))) + 1 == 5
    assert "event_types" not in json.loads((runs[False] / "config.json").read_text())["encoder"]
    learner = restored(runs[True])
    assert learner.uses_events and not restored(runs[False]).uses_events
    metrics = evaluate_run(runs[True])
    names = event_names(read_manifest(cart_data))
    again = evaluate_arrays(learner.scores, load_transitions(cart_data, "test", events=True), names,
                            torch.device("cpu"), split_repeat=True, events=True)
    assert again == metrics["test"]
    assert metrics["test"]["purchase"]["hr@5"] == 1.0  # the carted item is always among the window's five


def test_events_true_needs_event_windows_and_auto_follows_the_data(tmp_path, cart_data, capsys):
    auto = run_config({"encoder": {"events": "auto", "dim": 8}}, data=str(cart_data))
    assert auto.encoder.event_types == 5 and auto.to_dict()["encoder"]["event_types"] == 5
    off = run_config({"encoder": {"events": False, "dim": 8}}, data=str(cart_data))
    assert off.to_dict() == run_config({"encoder": {"dim": 8}}, data=str(cart_data)).to_dict()
    (tmp_path / "views").mkdir()
    views = prepared(tmp_path / "views", cart_rows(30, seed=0, only_views=True))
    assert run_config({"encoder": {"events": "auto", "dim": 8}}, data=str(views)).encoder.event_types == 0
    assert run_config({"encoder": {"events": True, "dim": 8}}, data=str(views)).encoder.event_types == 5
    # data prepared before event windows: one line naming the folder, re-run seqrec prepare
    old = tmp_path / "old"
    shutil.copytree(views, old)
    for f in old.glob("transitions/*/state_event.npy"):
        f.unlink()
    with pytest.raises(ConfigError, match=r"no transitions/train/state_event.npy .*re-run `seqrec prepare`") as e:
        run_config({"encoder": {"events": True}}, data=str(old))
    assert "\n" not in str(e.value) and str(old) in str(e.value)
    assert run_config({"encoder": {"events": "auto"}}, data=str(old)).encoder.event_types == 0
    with pytest.raises(InputError, match="re-run `seqrec prepare`"):
        load_transitions(old, "test", events=True)
    (tmp_path / "run.toml").write_text("[encoder]\nevents = true\n")
    code = main(["train", "--config", str(tmp_path / "run.toml"), "--data", str(old), "--out", str(tmp_path / "r"),
                 "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "re-run `seqrec prepare`" in err
    # what cannot pass events refuses them
    with pytest.raises(ConfigError, match="events applies to algorithm"):
        run_config({"algorithm": "d3rlpy.dqn", "encoder": {"events": True}}, data=str(cart_data))
    with pytest.raises(ConfigError, match="events applies to algorithm"):
        run_config({"encoder": {"events": True, "dim": 16}, "retrieval": {"enabled": True}}, data=str(cart_data))
    assert run_config({"encoder": {"events": "auto", "dim": 16}, "retrieval": {"enabled": True}},
                      data=str(cart_data)).encoder.event_types == 0  # "auto": on only where events can be passed
    with pytest.raises(ConfigError, match="events must be true, false or"):
        run_config({"encoder": {"events": "yes"}}, data=str(cart_data))


# ------------------------------------------------------------------------------------------- scoring


def test_scoring_reads_the_event_types_and_matches_the_learner(runs, tmp_path):
    """seqrec score on raw events ranks as the learner does on the hand-built (items, events) windows, and moving
    the cart to another position moves the top item with it."""
    from seqrec.api.run import open_run
    from seqrec.runs.score_config import ScoreConfig
    from seqrec.serve.scoring import load_bundle

    run = runs[True]
    learner = restored(run)
    bundle = load_bundle(run, ScoreConfig())
    vocab = bundle.vocab_ids.to_pylist()
    picks = [[100, 101, 102, 103, 104], [110, 111, 112, 113, 114]]
    top = {}
    for cart in (1, 3):
        rows = [(s, s, item, "cart" if j == cart else "view") for s, items in enumerate(picks)
                for j, item in enumerate(items)]
        log = write_log(tmp_path / f"in{cart}.parquet", rows)
        out = tmp_path / f"out{cart}"
        assert main(["score", "--run", str(run), "--input", str(log), "--out", str(out), "--no-progress"]) == 0
        df = pd.read_parquet(out / "scores").sort_values(["user_id", "rank"])
        items = torch.tensor([[vocab.index(i) + 2 for i in p] for p in picks])  # (2, W) catalogue indices
        events = torch.full((2, W), VIEW)
        events[:, cart] = CART
        with torch.no_grad():
            want = learner.scores(items, events)[:, 2:].argmax(1) + 2  # (2,) the learner's own first item
        first = df[df["rank"] == 1]["item_id"].tolist()
        assert first == [vocab[int(i) - 2] for i in want]
        api = open_run(run).score(pd.read_parquet(log))  # the notebook API cuts its own sessions: the same rows
        assert api[api["rank"] == 1].sort_values("user_id")["item_id"].tolist() == first
        top[cart] = first
    assert top[1] == [101, 111] and top[3] == [103, 113]  # the carted item, wherever it is


def test_scoring_an_event_type_the_run_does_not_know(runs, tmp_path, capsys):
    """An unknown raw event name is quarantined as always; a type added by the scoring job's event map, which the
    run's model has no row for, stops scoring with one line."""
    log = write_log(tmp_path / "in.parquet", [(0, 0, 100, "view"), (0, 0, 101, "share"), (0, 0, 102, "cart")])
    assert main(["score", "--run", str(runs[True]), "--input", str(log), "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 0
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["quarantine_reasons"] == {"unknown_event_type": 1} and m["sessions"]["scored"] == 1
    capsys.readouterr()
    assert main(["score", "--run", str(runs[True]), "--input", str(log), "--out", str(tmp_path / "o2"),
                 "--no-progress", "--event-map", "share=1.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "event type 'share' is not one the run was trained on" in err
    # a run without events scores the same input as it always did: the new type is just another event
    assert main(["score", "--run", str(runs[False]), "--input", str(log), "--out", str(tmp_path / "o3"),
                 "--no-progress", "--event-map", "share=1.5"]) == 0


@pytest.mark.parametrize("variant", ["snqn", "sa2c"])
def test_q_heads_read_the_event_windows_of_states_and_next_states(cart_data, variant):
    """The TD target values next states with their own event windows: changing only next_state_event changes the
    double-Q value; a batch without event windows is refused."""
    from seqrec.rl.qlearning.learner import Learner, double_q_value
    from seqrec.rl.qlearning.losses import HeadConfig

    from seqrec.training.sampler import to_batch

    torch.manual_seed(0)
    a = load_transitions(cart_data, "train", events=True)
    enc = EncoderConfig(num_items=int(read_manifest(cart_data)["catalogue_size"]), max_len=W, dim=8, dropout=0.0,
                        event_types=5)
    learner = Learner(enc, HeadConfig(variant=variant, copy=True, copy_aux=1.0), lr=0.01)
    for step in range(5):
        batch = to_batch(a, np.arange(step * 32, step * 32 + 32), torch.device("cpu"), events=True)
        stats = learner.update(batch, step, 0)
        assert all(np.isfinite(v) for v in stats.values())
    net, other = learner.nets
    with torch.no_grad():
        net.encoder.event_emb.weight.normal_()
        net.copy.event_bias.normal_()
    nxt, ev = batch["next_state"], batch["next_state_event"]
    shuffled = ev.roll(1, dims=1) * (nxt != 0)  # other event types at the same real positions
    assert not torch.equal(double_q_value(net, other, nxt, events=ev), double_q_value(net, other, nxt, events=shuffled))
    with pytest.raises(ValueError, match="batches need state_event and next_state_event"):
        learner.update({k: v for k, v in batch.items() if k != "next_state_event"}, 9, 0)
