"""d3rlpy's discrete offline Q-learning (DQN, Double DQN, CQL, BCQ) on our sequence encoder.

Used through d3rlpy's public seams: an `EncoderFactory` that builds our SASRec/GRU encoder, `*Config.create()`
and `algo.update(batch)` for the steps, `MDPDataset` for our transitions, and a `LoggerAdapter` writing to
torch's SummaryWriter under our tags. `D3rlpyLearner` gives an algorithm the interface of our own `Learner`
(update per (seed, step), scores (B, T) -> (B, I), state dicts), so `seqrec train` and `seqrec evaluate` run
it with the same loop, checkpoints and ranking protocol.

Traps handled here, each tested in tests/test_d3rlpy_bridge.py:
- d3rlpy hands observations over as float32: windows of item ids go in exact (ids < 2**24, checked) and the
  encoder turns them back with .long();
- d3rlpy probes an encoder with torch.rand input, which .long() makes an all-padding window: the encoder's
  learned empty-history state keeps it finite;
- `import d3rlpy` imports gym, which prints an 'unmaintained' notice to stderr with a plain print: it is
  removed from what the import writes, and anything else (warnings) is passed on (quiet.py);
- the encoder factory must be registered before `d3rlpy.load_learnable` in every process: `load_learnable`
  here does it;
- d3rlpy exposes only the arg-max action and the value of one action: `q_values` reads the whole (B, I)
  vector from the algorithm's Q functions;
- d3rlpy's targets take the arg-max of Q over every action, padding and OOV included, and d3rlpy has no action
  mask: `MaskedQFunctionFactory` builds its mean Q function with a forwarder (what DQN's and Double DQN's target
  arg-max, CQL's logsumexp and BCQ's choice read) that puts the actions that cannot be taken below all others,
  and BCQ's imitator never lets them through (masking.py). The Q networks and their state dicts are d3rlpy's.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from seqrec.rl.qlearning.actions import action_mask
from seqrec.rl.qlearning.learner import step_generator
from torch import nn

from seqrec.models.encoders import MAX_NUM_ITEMS, EncoderConfig, build_encoder

from .config import D3RLPY_ALGORITHMS, D3rlpyConfig
from .masking import MaskedQFunctionFactory, blocked_actions, mask_imitator
from .quiet import d3rlpy, drop_gym_notice, import_quietly  # noqa: F401  (re-exported: the bridge's names)

ENCODER_TYPE = "seqrec_sequence"


def to_observations(ids: np.ndarray) -> np.ndarray:
    """Item-id windows (N, T) as the float32 d3rlpy stores; exact because every id is checked < 2**24."""
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= MAX_NUM_ITEMS):
        raise ValueError(f"item ids must be in [0, 2**24) to pass through d3rlpy's float32 observations exactly; "
                         f"got ids in [{ids.min()}, {ids.max()}]")
    return ids.astype(np.float32)


def ids_from_observations(x: torch.Tensor, num_items: int) -> torch.Tensor:
    """float32 windows (B, T) from d3rlpy -> int64 ids (B, T); fractions truncate (d3rlpy's torch.rand probe
    becomes all padding). An id outside the catalogue is a clear error, not an index error deep in torch."""
    ids = x.long()  # (B, T)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_items):
        raise ValueError(f"observation holds item ids in [{int(ids.min())}, {int(ids.max())}], outside the "
                         f"catalogue [0, {num_items}); ids must be < 2**24 to survive d3rlpy's float32")
    return ids


class WindowEncoder(d3rlpy.models.torch.Encoder):
    """d3rlpy encoder: float32 windows of item ids (B, T) -> our encoder's state (B, D)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.num_items = cfg.num_items
        self.net = build_encoder(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.encode(ids_from_observations(x, self.num_items))  # (B, D)


@dataclass()
class SequenceEncoderFactory(d3rlpy.models.encoders.EncoderFactory):
    """Creates a `WindowEncoder`; serialises as our EncoderConfig, so d3rlpy can save and re-create it."""

    encoder: EncoderConfig = field(default_factory=lambda: EncoderConfig(num_items=3))

    def create(self, observation_shape: Any) -> WindowEncoder:
        window = observation_shape[0] if isinstance(observation_shape, (tuple, list)) else observation_shape
        if window > self.encoder.max_len:
            raise ValueError(f"observations are windows of {window} items but encoder.max_len = {self.encoder.max_len}")
        return WindowEncoder(self.encoder)

    def create_with_action(self, observation_shape: Any, action_size: int, discrete_action: bool = False) -> Any:
        raise NotImplementedError("the sequence encoder serves discrete-action algorithms only (Q over items)")

    @staticmethod
    def get_type() -> str:
        return ENCODER_TYPE


def register_encoder_factory() -> None:
    """Register `SequenceEncoderFactory` and `MaskedQFunctionFactory` with d3rlpy (once per process; needed
    before loading a saved algo)."""
    for register, factory in ((d3rlpy.models.encoders.register_encoder_factory, SequenceEncoderFactory),
                              (d3rlpy.models.q_functions.register_q_func_factory, MaskedQFunctionFactory)):
        try:
            register(factory)
        except AssertionError:  # d3rlpy asserts a type is registered only once: it already is
            pass


def load_learnable(path: str, device: str = "cpu") -> Any:
    """`d3rlpy.load_learnable` for files saved by our runs (checkpoints/best.d3): registers the factories first,
    and masks BCQ's imitator as the run did."""
    register_encoder_factory()
    algo = d3rlpy.load_learnable(path, device=device)
    mask_imitator(algo)
    return algo


def to_mdp_dataset(arrays: dict[str, np.ndarray], action_size: int) -> Any:
    """Prepared transitions (one split, session order) -> d3rlpy MDPDataset with one transition per row.

    Episodes are sessions: `done` (the session's last step in the split) is the terminal, rewards are the
    event-typed ones from prepare, and the action size is given (the catalogue size): items never taken in
    this split still get a Q output. Raises if a row's next state is not the next row's state.
    """
    state, next_state, done = np.asarray(arrays["state"]), np.asarray(arrays["next_state"]), np.asarray(arrays["done"])
    chained = np.all(next_state[:-1] == state[1:], axis=1) | done[:-1]  # (N-1,)
    if len(done) and not (chained.all() and done[-1]):
        raise ValueError("transitions are not in session order (next_state of a row != state of the next row)")
    return d3rlpy.dataset.MDPDataset(
        observations=to_observations(state), actions=np.asarray(arrays["action"], np.int64).reshape(-1, 1),
        rewards=np.asarray(arrays["reward"], np.float32).reshape(-1, 1), terminals=done.astype(np.float32),
        action_space=d3rlpy.ActionSpace.DISCRETE, action_size=action_size)


def algorithm_config(algorithm: str, enc: EncoderConfig, cfg: D3rlpyConfig, batch_size: int, lr: float,
                     gamma: float, masked: list[int] | None = None) -> Any:
    """The d3rlpy config of `algorithm` on our encoder, with our batch size, learning rate and discount, and a Q
    function that never chooses the `masked` action ids (default: padding and OOV)."""
    q_func = MaskedQFunctionFactory() if masked is None else MaskedQFunctionFactory(masked=list(masked))
    common = {"encoder_factory": SequenceEncoderFactory(enc), "batch_size": batch_size, "learning_rate": lr,
              "gamma": gamma, "n_critics": cfg.n_critics, "target_update_interval": cfg.target_update_interval,
              "q_func_factory": q_func}
    algos = d3rlpy.algos
    if algorithm == "d3rlpy.dqn":
        return algos.DQNConfig(**common)
    if algorithm == "d3rlpy.double_dqn":
        return algos.DoubleDQNConfig(**common)
    if algorithm == "d3rlpy.discrete_cql":
        return algos.DiscreteCQLConfig(**common, alpha=cfg.alpha)
    if algorithm == "d3rlpy.discrete_bcq":
        return algos.DiscreteBCQConfig(**common, action_flexibility=cfg.action_flexibility, beta=cfg.beta)
    raise ValueError(f"algorithm must be one of {', '.join(D3RLPY_ALGORITHMS)}, got {algorithm!r}")


@torch.no_grad()
def q_values(algo: Any, states: torch.Tensor) -> torch.Tensor:
    """The whole Q vector (B, I) of a built d3rlpy discrete algorithm for windows `states` (B, T): the mean
    over its Q networks, as d3rlpy's own `predict` takes it (d3rlpy has no public call for this). Like
    `predict`, it puts the networks in eval mode (no dropout); d3rlpy's next update puts them back."""
    algo.impl.modules.set_eval()
    x = states.to(torch.float32)  # (B, T) as d3rlpy feeds its networks
    qs = [q(x).q_value for q in algo.impl.q_function]  # n_critics x (B, I)
    return torch.stack(qs).mean(dim=0)  # (B, I)


@torch.no_grad()
def ranking_scores(algo: Any, states: torch.Tensor) -> torch.Tensor:
    """Scores (B, I) that rank the catalogue as the algorithm's policy would: Q values, with the actions it never
    chooses (padding, OOV, forbidden) below all others; discrete BCQ also ranks the actions its imitator allows
    (prob >= action_flexibility x the best) above all others."""
    q = q_values(algo, states)  # (B, I)
    blocked = blocked_actions(algo)  # (I,) or None
    allowed = torch.ones_like(q, dtype=torch.bool) if blocked is None else ~blocked.to(q.device).expand_as(q)
    if isinstance(algo, d3rlpy.algos.DiscreteBCQ):
        logp = F.log_softmax(algo.impl.modules.imitator(states.to(torch.float32)).logits, dim=1)  # (B, I)
        allowed = allowed & (logp - logp.max(dim=1, keepdim=True).values > math.log(algo.config.action_flexibility))
    if allowed.all():
        return q
    spread = q.max(dim=1, keepdim=True).values - q.min(dim=1, keepdim=True).values + 1.0  # (B, 1)
    return torch.where(allowed, q, q - spread)  # (B, I) every allowed item above every excluded one


# d3rlpy's metric names -> our TensorBoard tags
TAGS = {"loss": "loss/total", "td_loss": "loss/td", "conservative_loss": "loss/conservative",
        "imitator_loss": "loss/imitator", "time_step": "perf/step_s", "time_sample_batch": "perf/sample_batch_s",
        "time_algorithm_update": "perf/update_s"}


def tag(name: str) -> str:
    """Our namespaced tag for a d3rlpy metric name (unknown names go under d3rlpy/)."""
    return TAGS.get(name, f"d3rlpy/{name}")


class SummaryWriterAdapter:
    """d3rlpy `LoggerAdapter` on torch's SummaryWriter (d3rlpy's own needs tensorboardX), our tags, our step.

    The writer belongs to the caller: `close` only flushes it."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    def write_params(self, params: dict[str, Any]) -> None:
        rows = [f"|{k}|{json.dumps(v)}|" for k, v in params.items()]
        self.writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(rows), 0)

    def before_write_metric(self, epoch: int, step: int) -> None:
        pass

    def write_metric(self, epoch: int, step: int, name: str, value: float) -> None:
        self.writer.add_scalar(tag(name), value, step)

    def after_write_metric(self, epoch: int, step: int) -> None:
        self.writer.flush()

    def save_model(self, epoch: int, algo: Any) -> None:
        pass  # checkpoints are the training loop's business

    def close(self) -> None:
        self.writer.flush()

    def watch_model(self, epoch: int, step: int) -> None:
        pass


class SummaryWriterAdapterFactory:
    """d3rlpy `LoggerAdapterFactory`: `algo.fit(..., logger_adapter=SummaryWriterAdapterFactory(writer))` logs
    to `writer` and writes no d3rlpy_logs/ folder."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    def create(self, algo: Any, experiment_name: str, n_steps_per_epoch: int) -> SummaryWriterAdapter:
        return SummaryWriterAdapter(self.writer)


def mini_batch(batch: dict[str, torch.Tensor]) -> Any:
    """Our batch of transitions (tensors, as train.to_batch makes them) -> d3rlpy TransitionMiniBatch."""
    def column(t: torch.Tensor) -> np.ndarray:
        return t.detach().cpu().numpy().astype(np.float32).reshape(-1, 1)  # (B, 1)

    n = batch["action"].shape[0]
    return d3rlpy.dataset.TransitionMiniBatch(
        observations=to_observations(batch["state"].cpu().numpy()), actions=column(batch["action"]),
        rewards=column(batch["reward"]), next_observations=to_observations(batch["next_state"].cpu().numpy()),
        next_actions=np.zeros((n, 1), np.float32), terminals=column(batch["done"]),
        intervals=np.ones((n, 1), np.float32), transitions=[])


class D3rlpyLearner(nn.Module):
    """A d3rlpy algorithm behind our Learner's interface; its networks are this module's submodules, so
    state_dict() holds them all (Q, target Q, BCQ's imitator) and loads with torch.load(weights_only=True)."""

    def __init__(self, algorithm: str, enc: EncoderConfig, cfg: D3rlpyConfig, batch_size: int, lr: float,
                 gamma: float, device: torch.device | str = "cpu", allowed: torch.Tensor | None = None) -> None:
        """`allowed`: an optional (I,) bool mask of the actions the catalogue lets the recommender take; None,
        every real item. The targets never choose the others (padding and OOV always among them)."""
        super().__init__()
        if allowed is not None and allowed.dim() != 1:
            raise ValueError("a d3rlpy learner takes one (I,) allowed-action mask: d3rlpy's batches carry no "
                             "per-state masks")
        register_encoder_factory()
        self.algorithm = algorithm
        masked = (~action_mask(enc.num_items, allowed)).nonzero().squeeze(1).tolist()  # ids never chosen
        self.algo = algorithm_config(algorithm, enc, cfg, batch_size, lr, gamma, masked).create(device=str(device))
        self.algo.create_impl((enc.max_len,), enc.num_items)  # action size = the whole catalogue
        mask_imitator(self.algo)
        self.nets = nn.ModuleDict(self.algo.impl.modules.get_torch_modules())

    def update(self, batch: dict[str, torch.Tensor], step: int, seed: int) -> dict[str, float]:
        """One `algo.update` as step `step` (the target copy follows it); dropout seeded by (seed, step)."""
        device = batch["state"].device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(step_generator(seed, step).initial_seed())
            self.algo.set_grad_step(step)
            out = self.algo.update(mini_batch(batch))
        stats = {tag(k): float(v) for k, v in out.items()}
        if "td_loss" not in out:  # DQN and Double DQN: the whole loss is the TD loss
            stats["loss/td"] = stats["loss/total"]
        return stats

    def scores(self, state: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, I) ranking scores (Q values; BCQ's allowed actions first)."""
        return ranking_scores(self.algo, state)

    def q_values(self, state: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, I) Q values."""
        return q_values(self.algo, state)

    @property
    def has_q_head(self) -> bool:
        """Always: every d3rlpy algorithm here is a Q-learner."""
        return True

    def candidate_scores(self, items: torch.Tensor,
                         ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) windows, (B, K) candidate ids -> (B, K) ranking scores and (B, K) Q values, gathered from the
        full (B, I) ones (d3rlpy has no per-item call)."""
        return self.scores(items).gather(1, ids), self.q_values(items).gather(1, ids)

    def encode(self, items: torch.Tensor) -> torch.Tensor:
        """Not available: the encoder sits inside d3rlpy's Q functions, out of reach of its public API."""
        raise ValueError(f"a d3rlpy learner ({self.algorithm}) exposes no state encoding; use algorithm = 'seqrec'")

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """Not available (see `encode`)."""
        raise ValueError(f"a d3rlpy learner ({self.algorithm}) exposes no encoder to copy; use init = 'random'")

    def optim_state(self) -> list[dict]:
        return [self.algo.impl.modules.optim.state_dict()]

    def load_optim_state(self, states: list[dict]) -> None:
        (state,) = states
        self.algo.impl.modules.optim.load_state_dict(state)

    def save_d3rlpy(self, path: str) -> None:
        """d3rlpy's own file (algorithm config + weights), for `load_learnable`."""
        self.algo.save(path)
