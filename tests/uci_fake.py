"""A small file in the UCI Bank Marketing layout whose label follows a known logistic model, for the
simulator's and the A/B test's tests (the real file is in ../shared/data and may be absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

UCI_HEADER = ("age", "job", "marital", "education", "default", "housing", "loan", "contact", "month", "day_of_week",
              "duration", "campaign", "pdays", "previous", "poutcome", "emp.var.rate", "cons.price.idx",
              "cons.conf.idx", "euribor3m", "nr.employed", "y")
JOBS = ("admin.", "blue-collar", "management", "retired", "student", "technician", "services", "unknown")
MONTHS_SEEN = ("mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")


def fake_uci(path: Path, rows: int = 3000, seed: int = 0, duration: str = "leak", with_duration: bool = True) -> Path:
    """A file in the UCI layout whose label follows a known logistic model; `duration` leaks the label
    ('leak'), is shuffled ('shuffle') or is text ('text'), so a test can tell whether it is ever read."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 90, rows)
    job = rng.choice(JOBS, rows)
    pout = rng.choice(("failure", "nonexistent", "success"), rows, p=(0.1, 0.85, 0.05))
    month = rng.choice(MONTHS_SEEN, rows)
    logit = -2.2 + 1.0 * (age >= 65) + 0.8 * (job == "student") + 2.5 * (pout == "success") + 1.2 * (month == "mar")
    y = rng.random(rows) < 1 / (1 + np.exp(-logit))
    leak = np.where(y, 900, 60)     # own generator below, so the other columns do not depend on `duration`
    dur = {"leak": leak, "shuffle": np.random.default_rng(99).permutation(leak), "text": leak}[duration].astype(object)
    if duration == "text":
        dur[:] = "not-a-number"
    cols = {
        "age": age, "job": job, "marital": rng.choice(("married", "single", "divorced"), rows),
        "education": rng.choice(("basic.4y", "high.school", "university.degree"), rows),
        "default": rng.choice(("no", "unknown"), rows), "housing": rng.choice(("yes", "no"), rows),
        "loan": rng.choice(("yes", "no"), rows, p=(0.2, 0.8)), "contact": rng.choice(("cellular", "telephone"), rows),
        "month": month, "day_of_week": rng.choice(("mon", "tue", "wed", "thu", "fri"), rows), "duration": dur,
        "campaign": rng.integers(1, 5, rows), "pdays": np.full(rows, 999), "previous": rng.integers(0, 3, rows),
        "poutcome": pout, "emp.var.rate": np.full(rows, 1.1), "cons.price.idx": np.full(rows, 93.9),
        "cons.conf.idx": np.full(rows, -36.4), "euribor3m": np.full(rows, 4.8), "nr.employed": np.full(rows, 5191),
        "y": np.where(y, "yes", "no"),
    }
    header = [h for h in UCI_HEADER if with_duration or h != "duration"]
    lines = [";".join(f'"{h}"' for h in header)]
    for i in range(rows):
        lines.append(";".join(f'"{cols[h][i]}"' if isinstance(cols[h][i], str) else str(cols[h][i]) for h in header))
    path.write_text("\n".join(lines) + "\n")
    return path
