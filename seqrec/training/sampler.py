"""Training batches that depend only on (seed, step), so a resumed run draws the batches an unbroken one would."""

from __future__ import annotations

import numpy as np
import torch

from seqrec.core.config import ConfigError
from seqrec.datasets.sessions import next_windows


class EpochSampler:
    """Batch indices that depend only on (seed, step): each epoch is a seeded permutation of the data."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if n == 0:
            raise ConfigError("the training split has no transitions")
        self.n, self.b, self.seed = n, batch_size, seed
        self._cache: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            self._cache = {k: v for k, v in self._cache.items() if k >= epoch - 1}
            self._cache[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._cache[epoch]

    def indices(self, step: int) -> np.ndarray:
        pos = step * self.b + np.arange(self.b)  # positions in the endless stream of epochs
        epochs = pos // self.n
        out = np.empty(self.b, np.int64)
        for e in np.unique(epochs):
            m = epochs == e
            out[m] = self._perm(int(e))[pos[m] % self.n]
        return np.sort(out)  # sorted: friendlier reads from the memory-mapped arrays


def to_batch(arrays: dict[str, np.ndarray], idx: np.ndarray, device: torch.device,
             events: bool = False) -> dict[str, torch.Tensor]:
    """Rows `idx` of the transition arrays as tensors on `device`; with `events`, also "state_event" (B, W) and
    "next_state_event" (B, W), the next state's derived as prepare derives next_state (each row's own event + 1
    appended)."""
    batch = {
        "state": torch.from_numpy(np.asarray(arrays["state"][idx], np.int64)).to(device),
        "next_state": torch.from_numpy(np.asarray(arrays["next_state"][idx], np.int64)).to(device),
        "action": torch.from_numpy(np.asarray(arrays["action"][idx], np.int64)).to(device),
        "reward": torch.from_numpy(np.asarray(arrays["reward"][idx], np.float32)).to(device),
        "done": torch.from_numpy(np.asarray(arrays["done"][idx], np.bool_)).to(device),
    }
    if events:
        state_event = np.asarray(arrays["state_event"][idx], np.int64)  # (B, W)
        nxt = next_windows(state_event, np.asarray(arrays["event"][idx], np.int64) + 1)  # (B, W)
        batch["state_event"] = torch.from_numpy(state_event).to(device)
        batch["next_state_event"] = torch.from_numpy(nxt).to(device)
    return batch
