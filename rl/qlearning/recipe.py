"""The supervised head's recipe keys of `[head]` (loss, loss_negatives, sampler, gbce_t, label_smoothing, copy):
their names and checks, apart from the losses so that HeadConfig can check them (rl/qlearning/supervised.py)."""

from __future__ import annotations

LOSSES = ("ce", "sampled", "gbce")   # full cross-entropy (default), sampled softmax with log-Q correction, gBCE
SAMPLERS = ("uniform", "popularity")  # negatives of loss = "sampled": uniform over real items, or by target counts
RECIPE_KEYS = ("loss", "loss_negatives", "sampler", "gbce_t", "label_smoothing", "copy", "copy_aux", "copy_category",
               "copy_calibrate")


def check_recipe(loss: str, negatives: int, sampler: str, gbce_t: float, smoothing: float, copy: bool,
                 copy_aux: float = 0.0, copy_category: bool = False, copy_calibrate: bool = False) -> None:
    """HeadConfig's checks of the recipe's keys (ValueError naming the key)."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    if isinstance(negatives, bool) or not isinstance(negatives, int) or negatives < 1:
        raise ValueError(f"loss_negatives must be an integer >= 1, got {negatives!r}")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if sampler != "uniform" and loss != "sampled":
        raise ValueError(f"sampler = {sampler!r} applies to loss = \"sampled\" only")
    if isinstance(gbce_t, bool) or not isinstance(gbce_t, (int, float)) or not 0.0 <= gbce_t <= 1.0:
        raise ValueError(f"gbce_t must be a number in [0, 1], got {gbce_t!r}")
    if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)) or not 0.0 <= smoothing < 1.0:
        raise ValueError(f"label_smoothing must be a number in [0, 1), got {smoothing!r}")
    if not isinstance(copy, bool):
        raise ValueError(f"copy must be a bool, got {copy!r}")
    if isinstance(copy_aux, bool) or not isinstance(copy_aux, (int, float)) or not 0.0 <= copy_aux < float("inf"):
        raise ValueError(f"copy_aux must be a number >= 0, got {copy_aux!r}")
    if copy_aux and not copy:
        raise ValueError("copy_aux applies with copy = true only")
    if not isinstance(copy_category, bool):
        raise ValueError(f"copy_category must be a bool, got {copy_category!r}")
    if copy_category and not copy:
        raise ValueError("copy_category applies with copy = true only")
    if not isinstance(copy_calibrate, bool):
        raise ValueError(f"copy_calibrate must be a bool, got {copy_calibrate!r}")
    if copy_calibrate and not copy_category:
        raise ValueError("copy_calibrate applies with copy_category = true only")
    if loss == "gbce" and (smoothing or copy):
        raise ValueError('loss = "gbce" is no softmax: label_smoothing and copy need loss = "ce" or "sampled"')
