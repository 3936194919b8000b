"""`[head] copy_calibrate`: after training, the offsets of the mixture's two gate logits (copy g, category h) are
chosen on the validation split by the selection metric, and kept in the best checkpoint.

Why: the gates are fitted on training targets, which the catalogue's softmax has memorised, so in-sample they give
it more weight than it earns on new targets (on the Taobao slice any share for it lowers validation HR@10:
docs/results/training.md). The grid is a handful of points, so validation picks them as it picks the step.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from seqrec.training.checkpoints import load_checkpoint, save_checkpoint

SHIFTS = (0.0, 2.0, 4.0, 8.0, 20.0)  # added to a gate's logit; 20 is "all of the share" for any state


def choose_shifts(set_shift: Callable[[float, float], None], evaluate: Callable[[], float | None],
                  shifts: tuple[float, ...] = SHIFTS) -> dict:
    """Scores every (copy, category) offset pair with `evaluate` (the selection metric, offsets set by `set_shift`);
    keeps (0, 0), the trained gates, unless a pair is strictly better (the first such in grid order). Leaves the
    chosen pair set. Returns {"grid": [[s_g, s_h, metric], ...], "chosen": [s_g, s_h], "metric": value}."""
    grid, best, chosen = [], None, (0.0, 0.0)
    for a in shifts:
        for b in shifts:
            set_shift(a, b)
            value = evaluate()
            grid.append([a, b, value])
            if value is not None and (best is None or value > best):
                best, chosen = value, (a, b)
    set_shift(*chosen)
    return {"grid": grid, "chosen": list(chosen), "metric": best}


def calibrate_checkpoint(learner, path: Path, evaluate: Callable[[], float | None], device) -> dict:
    """Loads checkpoint `path` into `learner`, chooses its gate offsets (choose_shifts) and writes the checkpoint
    back with them (atomically; its sidecar gains "calibration"). Re-running it gives the same offsets: the
    grid sets them, it does not add to them."""
    payload = load_checkpoint(path, device)
    learner.load_state_dict(payload["model"])
    result = choose_shifts(learner.set_gate_shift, evaluate)
    payload["model"] = learner.state_dict()
    sidecar = path.with_suffix(".json")
    info = json.loads(sidecar.read_text()) if sidecar.exists() else {}
    save_checkpoint(path, payload, {**info, "calibration": result})
    return result
