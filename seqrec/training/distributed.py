"""Data-parallel training over several processes: `torchrun --nproc_per_node=N -m seqrec train ...`.

torchrun (or any launcher that sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT) starts one
`seqrec train` per rank; `seqrec.runs.train.train` reads the rank from the environment (`from_env`) and, when
WORLD_SIZE > 1, runs the same loop with the helpers below. With WORLD_SIZE unset or 1 none of them is called
and no process group is made: the single-process path is the one it always was.

What a distributed run is (the choices, and why):

- **Batch and learning rate.** `train.batch_size` is the global batch, the effective batch of one optimiser
  step: rank r trains on rows r::N of exactly the batch a 1-process run would draw at that step (`shard_rows`),
  so each rank sees batch_size / N rows (batch_size must divide by N). Each rank's loss is the mean over its
  rows and the gradients are averaged over ranks, which is the gradient of the mean over the global batch; so
  `train.lr` means what it means in a 1-process run and is not scaled. A config trains the same model (up to
  floating-point summation order, and dropout masks: below) on any number of ranks. To use more ranks for a
  larger batch, raise batch_size yourself (and the learning rate if you want, e.g. linearly: that is a
  modelling choice, not something the launcher should make silently).
- **Gradient averaging** is an optimiser step pre-hook (`sync_gradients`) that all-reduces the gradients of
  the optimiser's parameters in one flat buffer per dtype and divides by N: the all-reduce
  DistributedDataParallel does, without its module wrapper. The wrapper does not fit the learner: the Q
  variants hold two networks and a (seed, step) coin picks which one learns each step; the learner calls
  `backward` itself, through `encode` / `q_at` rather than `forward` (DDP's reducer is armed in `forward`);
  and the idle network and unused heads would need `find_unused_parameters`, an extra graph walk per step.
  The coin is the same on every rank (same generator), so every rank steps the same optimiser and the
  collectives line up. A parameter with no gradient on a rank counts as zero there (its part of the mean
  loss does not depend on it); one with no gradient on any rank keeps none, so Adam skips it as in 1 process.
- **Randomness.** Batch order, the double-Q coin, negatives (SNQN, SA2C) and dropout are drawn from (seed,
  step), identically on every rank, as in a 1-process run; rank r's local row j therefore gets the same
  negatives and dropout mask as local row j of every other rank. Each row's draws are still uniform and
  independent of its own data (no bias), but across ranks they are shared, where a 1-process run draws them
  for all batch_size rows; so with dropout > 0, or negatives, a 2-rank run differs from the 1-rank run as a
  different seed would, while with dropout 0 and SQN/SAC it differs only by summation order (tested). Drawing
  per rank would need the learner to know its rank (rl/qlearning.py), which is left as it is.
- **Weights** start equal: every rank seeds the same initialisation and rank 0's parameters are broadcast
  anyway (`broadcast_module`), as DDP does. Every rank then applies the same averaged gradient to the same
  weights, so the ranks stay identical and rank 0's state is the whole state.
- **Files.** Only rank 0 checks and writes the run folder (config.json, checkpoints, TensorBoard); the others
  get a `NullWriter`. On --resume, rank 0 reads checkpoints/last.pt and broadcasts it (`on_main`), so only
  rank 0's machine needs the run folder; every machine needs the prepared dataset at the same path. A config
  error found by rank 0 is raised on every rank, so no rank waits for a peer that has stopped.
- **Evaluation** is sharded: rank r ranks a contiguous 1/N of the validation transitions (`split_rows`) and
  the per-event sums are combined (`gather_metrics`), so every rank gets the 1-process metrics (up to
  rounding) and the same best checkpoint decision.
- **Logged losses** are averaged over ranks at log steps (`mean_stats`): the mean over the global batch.
- **Backends:** gloo on CPU, NCCL on CUDA (rank's device cuda:LOCAL_RANK).
- **d3rlpy algorithms** are refused: their update runs backward and the optimiser step inside d3rlpy, whose
  optimisers are reachable only through its private implementation objects, against the rule of using
  d3rlpy through its public seams. The [retrieval] model (if enabled) trains after the Q model on rank 0
  alone, as in a 1-process run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from seqrec.core.config import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Rank:
    """This process's place in a distributed run (from torchrun's environment)."""

    rank: int        # 0 .. world - 1, over all machines
    world: int       # number of processes (> 1)
    local_rank: int  # 0 .. processes on this machine - 1: picks the GPU

    def __post_init__(self) -> None:
        if self.world < 2 or not 0 <= self.rank < self.world or self.local_rank < 0:
            raise ConfigError(f"invalid distributed rank: RANK={self.rank}, WORLD_SIZE={self.world}, "
                              f"LOCAL_RANK={self.local_rank}")

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes the run folder and prints."""
        return self.rank == 0


def from_env(environ: Mapping[str, str] | None = None) -> Rank | None:
    """The Rank torchrun describes in RANK / WORLD_SIZE / LOCAL_RANK; None for a single process (WORLD_SIZE
    unset or 1), which then trains with no process group at all."""
    env = os.environ if environ is None else environ
    if env.get("WORLD_SIZE", "1").strip() in ("", "1"):
        return None
    try:
        world, rank = int(env["WORLD_SIZE"]), int(env.get("RANK", ""))
        local = int(env.get("LOCAL_RANK", rank))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={env.get('WORLD_SIZE')!r} needs integer RANK and LOCAL_RANK (as torchrun "
                          f"sets them); got RANK={env.get('RANK')!r}, LOCAL_RANK={env.get('LOCAL_RANK')!r}") from None
    return Rank(rank, world, local)


def check_supported(rank: Rank, algorithm: str, batch_size: int) -> None:
    """Refuse, before any process group exists, what a distributed run cannot do (see the module notes)."""
    if algorithm != "seqrec":
        raise ConfigError(f"algorithm = {algorithm!r} cannot train on {rank.world} processes: d3rlpy runs its "
                          "own backward and optimiser step, with no public seam to average gradients; "
                          "train it in one process (no torchrun, or --nproc_per_node=1)")
    if batch_size % rank.world:
        raise ConfigError(f"train.batch_size ({batch_size}) is the global batch and must divide by the number "
                          f"of processes ({rank.world}): each rank trains on batch_size / {rank.world} rows")


def rank_device(rank: Rank, device: torch.device) -> torch.device:
    """The rank's device: cuda:LOCAL_RANK (made current, as NCCL needs) on CUDA, else `device` unchanged."""
    if device.type != "cuda":
        return device
    if rank.local_rank >= torch.cuda.device_count():
        raise ConfigError(f"LOCAL_RANK {rank.local_rank} but this machine has {torch.cuda.device_count()} CUDA "
                          "devices: start at most one process per GPU (--nproc_per_node)")
    torch.cuda.set_device(rank.local_rank)
    return torch.device("cuda", rank.local_rank)


@contextmanager
def process_group(rank: Rank, device: torch.device) -> Iterator[None]:
    """The default process group (gloo on CPU, NCCL on CUDA) from the env:// rendezvous torchrun sets up;
    one a caller made already is used and left to it. On success the ranks meet at a barrier and the group is
    destroyed (a rank that tears its connections down while a peer is still in a collective can abort it);
    after an error it is not, since the peers may be inside a collective that will never complete: the
    process exits and torchrun stops the others."""
    made = not dist.is_initialized()
    if made:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank.rank, world_size=rank.world)
    yield
    if made:
        dist.barrier()
        dist.destroy_process_group()


def shard_rows(idx: np.ndarray, rank: Rank | None) -> np.ndarray:
    """Rank r's rows of a global batch: idx[r::world], so the ranks' rows together are exactly the batch one
    process would train on (identity for a single process). (B,) -> (B / world,)"""
    return idx if rank is None else idx[rank.rank::rank.world]


def split_rows(arrays: dict[str, np.ndarray], rank: Rank | None) -> dict[str, np.ndarray]:
    """Rank r's contiguous 1/world of a split's transition arrays (memory-map slices: only they are read)."""
    if rank is None:
        return arrays
    n = len(next(iter(arrays.values())))
    lo, hi = n * rank.rank // rank.world, n * (rank.rank + 1) // rank.world
    return {k: v[lo:hi] for k, v in arrays.items()}


def average_gradients(params: Sequence[torch.Tensor], world: int) -> None:
    """Replace each parameter's gradient by its mean over the ranks: one all-reduce (sum) of a flat buffer per
    dtype, holding the gradients and a has-gradient flag per parameter, then / world. A missing gradient is
    zero in the sum; a parameter without a gradient on every rank keeps None. Every rank must call this with
    the same parameters in the same order (the collectives must match)."""
    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in params:
        groups.setdefault(p.dtype, []).append(p)
    for dtype, ps in groups.items():
        if any(p.grad is not None and p.grad.is_sparse for p in ps):
            raise ValueError("sparse gradients are not supported by average_gradients")
        device = ps[0].device
        flags = torch.tensor([p.grad is not None for p in ps], dtype=dtype, device=device)  # (P,)
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in ps]
                         + [flags])  # (sum of sizes + P,)
        dist.all_reduce(flat)
        flat /= world
        have = flat[-len(ps):] > 0  # (P,) some rank had a gradient
        for p, chunk, has in zip(ps, flat[:-len(ps)].split([p.numel() for p in ps]), have.tolist()):
            if not has:
                p.grad = None
            elif p.grad is None:
                p.grad = chunk.view_as(p).clone()
            else:
                p.grad.copy_(chunk.view_as(p))


def sync_gradients(optimizers: Sequence[torch.optim.Optimizer], world: int) -> list[Any]:
    """Average gradients over the ranks just before each optimiser step (a step pre-hook per optimiser, so the
    learner that calls backward and step needs no change). Returns the hook handles (`.remove()` undoes)."""

    def hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        average_gradients([p for group in opt.param_groups for p in group["params"]], world)

    return [opt.register_step_pre_hook(hook) for opt in optimizers]


@torch.no_grad()
def broadcast_module(module: torch.nn.Module) -> None:
    """Overwrite every parameter and buffer with rank 0's, in place (what DDP does at construction)."""
    for t in module.state_dict().values():
        dist.broadcast(t, src=0)


def on_main(rank: Rank | None, fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` run on rank 0 only; its return value (picklable; tensors on CPU) reaches every rank, and
    so does a ConfigError it raises, so that no rank waits for a peer that stopped. Plain call without ranks."""
    if rank is None:
        return fn(*args)
    box: list[Any] = [None]
    if rank.main:
        try:
            box[0] = ("ok", fn(*args))
        except ConfigError as e:
            box[0] = ("error", str(e))
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise ConfigError(value)
    return value


def mean_stats(stats: dict[str, float], device: torch.device) -> dict[str, float]:
    """The mean over ranks of each rank's step statistics (same keys on every rank: same variant and coin)."""
    keys = sorted(stats)
    values = torch.tensor([float(stats[k]) for k in keys], dtype=torch.float64, device=device)  # (K,)
    dist.all_reduce(values)
    return {k: v / dist.get_world_size() for k, v in zip(keys, values.tolist())}


def merge_metrics(parts: Sequence[dict[str, dict[str, float]]],
                  event_names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Metrics of disjoint parts of a split -> the split's metrics: per event type, the count-weighted mean of
    each metric (each part's sum is its mean times its count), in event-code order like RankingMetrics."""
    out: dict[str, dict[str, float]] = {}
    for name in event_names:
        rows = [p[name] for p in parts if name in p]
        count = sum(int(r["count"]) for r in rows)
        if not count:
            continue
        metrics = [m for m in rows[0] if m != "count"]
        out[name] = {**{m: sum(r[m] * r["count"] for r in rows) / count for m in metrics}, "count": count}
    return out


def gather_metrics(rank: Rank | None, local: dict[str, dict[str, float]],
                   event_names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Every rank's metrics of its `split_rows` part, merged: the whole split's metrics, on every rank."""
    if rank is None:
        return local
    parts: list[Any] = [None] * rank.world
    dist.all_gather_object(parts, local)
    return merge_metrics(parts, event_names)


class NullWriter:
    """Stands in for SummaryWriter on ranks other than 0: only rank 0 writes TensorBoard logs."""

    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        pass

    def add_text(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass
