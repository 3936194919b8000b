"""The training loop's settings ([train]): batches, optimiser, schedule of validation and checkpoints, device."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainConfig:
    """The training loop: batches, optimiser, schedule of validation and checkpoints, device."""

    batch_size: int = 256
    lr: float = 0.005
    max_steps: int = 2000
    eval_every: int = 500            # validation (and checkpoint) every N steps, and at the end
    log_every: int = 50              # TensorBoard scalars every N steps
    select_metric: str = "purchase/ndcg@10"  # EVENT/METRIC on the valid split that picks the best checkpoint
    seed: int = 0
    device: str = "auto"             # auto | cpu | cuda
    amp: bool = True                 # bfloat16 autocast on CUDA (ignored on CPU)
    eval_batch_size: int = 1024
    patience: int = 0                # early stopping: stop once this many steps passed since the best validation
    #                                  without a new best (checked at evaluations); 0: train max_steps

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_steps", "eval_every", "log_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if isinstance(self.patience, bool) or not isinstance(self.patience, int) or self.patience < 0:
            raise ValueError(f"patience must be an integer >= 0, got {self.patience!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.select_metric.count("/") != 1:
            raise ValueError(f"select_metric must be EVENT/METRIC like purchase/ndcg@10, got {self.select_metric!r}")
