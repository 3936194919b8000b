"""The d3rlpy bridge: the encoder factory on d3rlpy's probe and float32 ids, our transitions as an MDPDataset,
the whole Q vector, step-exact updates, save/load with identical Q values, TensorBoard tags, the gym notice."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from seqrec.datasets.manifest import load_transitions, read_manifest
from seqrec.rl.d3rlpy_bridge.bridge import (
    D3rlpyLearner,
    SequenceEncoderFactory,
    SummaryWriterAdapterFactory,
    algorithm_config,
    d3rlpy,
    ids_from_observations,
    q_values,
    ranking_scores,
    register_encoder_factory,
    to_mdp_dataset,
    to_observations,
)
from seqrec.rl.d3rlpy_bridge.config import D3RLPY_ALGORITHMS, D3rlpyConfig
from synthetic_data import prepared_log

from seqrec.models.encoders import EncoderConfig
from seqrec.training.sampler import EpochSampler, to_batch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    return prepared_log(d)


def _enc(num_items: int = 42, kind: str = "sasrec") -> EncoderConfig:
    return EncoderConfig(kind=kind, num_items=num_items, max_len=10, dim=16)


def _learner(algorithm: str, seed: int = 0, num_items: int = 42, **cfg) -> D3rlpyLearner:
    torch.manual_seed(seed)
    return D3rlpyLearner(algorithm, _enc(num_items), D3rlpyConfig(**cfg), batch_size=32, lr=0.01, gamma=0.5)


def _train(learner: D3rlpyLearner, arrays: dict, steps: range, seed: int = 0) -> None:
    sampler = EpochSampler(len(arrays["action"]), 32, seed)
    for step in steps:
        learner.update(to_batch(arrays, sampler.indices(step), torch.device("cpu")), step, seed)


def _states(arrays: dict, n: int = 64) -> torch.Tensor:
    return torch.from_numpy(np.asarray(arrays["state"][:n], np.int64))  # (n, T)


@pytest.mark.parametrize("kind", ["sasrec", "gru"])
def test_encoder_is_finite_on_d3rlpys_random_probe(kind):
    encoder = SequenceEncoderFactory(_enc(50, kind)).create((10,))
    encoder.eval()
    # d3rlpy sizes the Q head by running the encoder on torch.rand input
    assert d3rlpy.models.torch.encoders.compute_output_size([(10,)], encoder) == 16
    probe = encoder(torch.rand(2, 10))  # (2, D)
    assert torch.isfinite(probe).all()
    # fractions truncate to 0: the probe is an all-padding window, i.e. the empty history
    assert torch.equal(probe, encoder.net.encode(torch.zeros(2, 10, dtype=torch.long)))


def test_float32_round_trip_of_large_ids_is_exact():
    ids = np.array([[0, 1, 2, 9_999_999, 16_000_001, 2**24 - 3, 2**24 - 2, 2**24 - 1]], np.int64)
    obs = to_observations(ids)
    assert obs.dtype == np.float32
    assert torch.equal(ids_from_observations(torch.from_numpy(obs), num_items=2**24), torch.from_numpy(ids))
    assert np.float32(2**24 + 1) == np.float32(2**24)  # why the bound: float32 stops being exact here
    for bad in (2**24, 2**24 + 1, -1):
        with pytest.raises(ValueError, match=r"2\*\*24"):
            to_observations(np.array([[5, bad]]))


def test_encoder_names_ids_outside_the_catalogue():
    encoder = SequenceEncoderFactory(_enc(50)).create((10,))
    with pytest.raises(ValueError, match=r"outside the catalogue \[0, 50\)"):
        encoder(torch.tensor([[0.0, 3.0, 60.0]]))


def test_mdp_dataset_keeps_every_transition_with_the_given_action_size(data):
    arrays = load_transitions(data, "train")
    size = read_manifest(data)["catalogue_size"] + 7  # larger than any logged action + 1
    ds = to_mdp_dataset(arrays, size)
    assert ds.dataset_info.action_size == size
    assert ds.transition_count == len(arrays["action"])
    assert len(ds.episodes) == int(arrays["done"].sum()) and all(e.terminated for e in ds.episodes)
    np.testing.assert_array_equal(np.concatenate([e.observations for e in ds.episodes]), arrays["state"])
    np.testing.assert_array_equal(np.concatenate([e.actions for e in ds.episodes])[:, 0], arrays["action"])
    np.testing.assert_array_equal(np.concatenate([e.rewards for e in ds.episodes])[:, 0], arrays["reward"])
    shuffled = {k: np.asarray(v)[::-1] for k, v in arrays.items()}
    with pytest.raises(ValueError, match="session order"):
        to_mdp_dataset(shuffled, size)


@pytest.mark.parametrize("algorithm", D3RLPY_ALGORITHMS)
def test_q_vector_matches_predict_value_and_ranking_matches_predict(algorithm, data):
    arrays = load_transitions(data, "train")
    learner = _learner(algorithm, n_critics=2 if algorithm == "d3rlpy.dqn" else 1, target_update_interval=10)
    _train(learner, arrays, range(60))
    states = _states(arrays)
    obs = states.numpy().astype(np.float32)
    q = q_values(learner.algo, states)  # (B, I)
    assert q.shape == (64, 42)
    actions = np.array(arrays["action"][:64], np.int64)
    np.testing.assert_allclose(q[torch.arange(64), torch.from_numpy(actions)].numpy(),
                               learner.algo.predict_value(obs, actions), rtol=1e-5, atol=1e-6)
    scores = ranking_scores(learner.algo, states)
    np.testing.assert_array_equal(scores.argmax(dim=1).numpy(), learner.algo.predict(obs))
    if algorithm == "d3rlpy.discrete_bcq":  # the imitator's filter changes the ranking, not just the top item
        assert (scores.argmax(dim=1) != q.argmax(dim=1)).any()


def test_our_config_sets_batch_lr_discount_and_the_target_copies(data):
    cfg = algorithm_config("d3rlpy.discrete_cql", _enc(), D3rlpyConfig(target_update_interval=3, alpha=2.0),
                           batch_size=64, lr=0.003, gamma=0.5)
    assert (cfg.batch_size, cfg.learning_rate, cfg.gamma, cfg.alpha, cfg.target_update_interval) == (
        64, 0.003, 0.5, 2.0, 3)  # not d3rlpy's 32, 6.25e-5, 0.99, 1.0, 8000
    learner = _learner("d3rlpy.double_dqn", target_update_interval=3)
    arrays = load_transitions(data, "train")
    synced = []
    for step in range(7):
        _train(learner, arrays, range(step, step + 1))
        q, target = learner.nets["q_funcs"].state_dict(), learner.nets["targ_q_funcs"].state_dict()
        synced.append(all(torch.equal(q[k], target[k]) for k in q))
    assert synced == [s % 3 == 0 for s in range(7)]


def test_resumed_steps_repeat_an_uninterrupted_run(data, tmp_path):
    arrays = load_transitions(data, "train")
    whole = _learner("d3rlpy.discrete_cql", target_update_interval=4)
    _train(whole, arrays, range(10))
    first = _learner("d3rlpy.discrete_cql", target_update_interval=4)
    _train(first, arrays, range(5))
    torch.save({"model": first.state_dict(), "optim": first.optim_state()}, tmp_path / "ckpt.pt")
    resumed = _learner("d3rlpy.discrete_cql", seed=99, target_update_interval=4)  # other initial weights
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    resumed.load_state_dict(state["model"])
    resumed.load_optim_state(state["optim"])
    _train(resumed, arrays, range(5, 10))
    a, b = whole.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_trained_algorithm_saves_and_loads_with_identical_q(data, tmp_path):
    arrays = load_transitions(data, "train")
    learner = _learner("d3rlpy.discrete_cql", target_update_interval=50)
    _train(learner, arrays, range(300))
    states = _states(arrays)
    q = learner.q_values(states)

    # our checkpoint: state dicts, loadable with weights_only=True
    torch.save({"model": learner.state_dict()}, tmp_path / "best.pt")
    other = _learner("d3rlpy.discrete_cql", seed=5)
    other.load_state_dict(torch.load(tmp_path / "best.pt", weights_only=True)["model"])
    assert torch.equal(other.q_values(states), q)

    # d3rlpy's own file, loaded in a fresh process: load_learnable fails until the factory is registered
    learner.save_d3rlpy(str(tmp_path / "best.d3"))
    np.save(tmp_path / "states.npy", states.numpy())
    script = f"""
import numpy as np, torch
torch.set_num_threads(1)
from seqrec.rl.d3rlpy_bridge.bridge import d3rlpy, load_learnable, q_values
try:
    d3rlpy.load_learnable({str(tmp_path / "best.d3")!r})
    print("loaded without registration")
except KeyError:
    pass
algo = load_learnable({str(tmp_path / "best.d3")!r})
states = torch.from_numpy(np.load({str(tmp_path / "states.npy")!r}))
np.save({str(tmp_path / "q.npy")!r}, q_values(algo, states).numpy())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert "loaded without registration" not in out.stdout
    np.testing.assert_array_equal(np.load(tmp_path / "q.npy"), q.numpy())


def test_fit_with_our_logger_writes_our_tags_and_no_d3rlpy_logs(data, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    monkeypatch.chdir(tmp_path)
    register_encoder_factory()
    torch.manual_seed(0)
    algo = algorithm_config("d3rlpy.discrete_cql", _enc(), D3rlpyConfig(), batch_size=32, lr=0.01,
                            gamma=0.5).create(device="cpu")
    writer = SummaryWriter(str(tmp_path / "tb"))
    algo.fit(to_mdp_dataset(load_transitions(data, "train"), 42), n_steps=20, n_steps_per_epoch=10,
             logger_adapter=SummaryWriterAdapterFactory(writer), show_progress=False)
    writer.close()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss/total", "loss/td", "loss/conservative", "perf/step_s", "perf/update_s"} <= tags, tags
    assert [e.step for e in acc.Scalars("loss/td")] == [10, 20]  # our step counter, not d3rlpy's epoch
    assert "hyperparameters/text_summary" in acc.Tags()["tensors"]
    assert not (tmp_path / "d3rlpy_logs").exists()


def test_import_drops_gym_notice_and_keeps_real_warnings(tmp_path):
    (tmp_path / "noisy_module.py").write_text(
        "import sys, warnings\nimport gym, gym_notices.notices as n\n"
        "print(n.notices[gym.__version__], file=sys.stderr)\nwarnings.warn('a real warning from the import')\n")
    script = (f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n"
              "from seqrec.rl.d3rlpy_bridge.bridge import import_quietly\nimport_quietly('noisy_module')\n")
    out = subprocess.run([sys.executable, "-W", "always", "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "a real warning from the import" in out.stderr
    assert "unmaintained" not in out.stderr + out.stdout  # neither from d3rlpy's gym nor from the module


def test_the_learner_seam_gathers_the_full_scores_and_q_values():
    learner = _learner("d3rlpy.dqn")
    items = torch.randint(0, 42, (5, 10), generator=torch.Generator().manual_seed(1))
    ids = torch.tensor([[2, 9, 41]] * 5)
    sup, q = learner.candidate_scores(items, ids)
    assert learner.has_q_head
    assert torch.equal(sup, learner.scores(items).gather(1, ids))
    assert torch.equal(q, learner.q_values(items).gather(1, ids))
    with pytest.raises(ValueError, match="no state encoding"):
        learner.encode(items)
    with pytest.raises(ValueError, match="no encoder"):
        learner.encoder_state_dict()
