"""Shared fixtures: the folder of real public data (outside the repo) and helpers to find files in it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DEFAULT_SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """torch on one thread for every test: the tensors are tiny, and on a shared 2-core machine two OpenMP
    threads spin-wait for each other and run many times slower. A test that needs more sets it itself."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def missing_data(message: str) -> None:
    """A real-data test without its data: skipped, saying why; a failure under SEQREC_REQUIRE_DATA=1 (.ci/run
    sets it), so that CI cannot go green while the data it should test moved away."""
    if os.environ.get("SEQREC_REQUIRE_DATA") == "1":
        pytest.fail(f"{message} (SEQREC_REQUIRE_DATA=1: real-data tests must run)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder: $SEQREC_SHARED_DATA, else <repo>/../shared/data; skips when absent (fails under
    SEQREC_REQUIRE_DATA=1)."""
    env = os.environ.get("SEQREC_SHARED_DATA")
    path = Path(env) if env else DEFAULT_SHARED_DATA
    if not path.is_dir():
        how = "from SEQREC_SHARED_DATA" if env else "the default; set SEQREC_SHARED_DATA to point elsewhere"
        missing_data(f"real data folder {path} is absent ({how}); real-data tests need it")
    return path


@pytest.fixture(scope="session")
def shared_file(shared_data):
    """shared_file(folder, pattern) -> the one file matching `pattern` in shared_data/folder, or skip."""

    def find(folder: str, pattern: str) -> Path:
        matches = sorted((shared_data / folder).glob(pattern))
        if not matches:
            missing_data(f"{shared_data / folder}/{pattern} is absent from the real data folder")
        assert len(matches) == 1, f"expected one file for {folder}/{pattern}, found {matches}"
        return matches[0]

    return find


SCORE_RUN = """
[encoder]
kind = "sasrec"
dim = 16

[head]
variant = "sqn"

[train]
batch_size = 32
max_steps = 6
eval_every = 6
log_every = 3
"""
SCORE_RETRIEVAL = """
[retrieval]
enabled = true
max_steps = 4
eval_every = 4
batch_size = 32
user_categorical = ["user_segment"]
item_categorical = ["item_category"]

[rerank]
w_q = 0.5
"""


@pytest.fixture(scope="session")
def score_world(tmp_path_factory) -> dict:
    """For the scoring tests (both engines): a generated log, its prepared folder, a run with a retrieval model
    ("tower") and one without ("plain": ce head, no Q), trained once per test session (read-only)."""
    import torch
    from seqrec.datasets.adapters import source_spec
    from seqrec.datasets.prepare import PrepareConfig, prepare
    from seqrec.datasets.synthetic import SyntheticConfig, write_events

    from seqrec.runs.config import load_run_config
    from seqrec.runs.train import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("score")
    log = d / "events.parquet"
    write_events(SyntheticConfig(users=150, items=40, seed=3), log)
    prepare([log], lambda p: source_spec("events", p), PrepareConfig(), d / "data")
    runs = {}
    for name, text in (("tower", SCORE_RUN + SCORE_RETRIEVAL), ("plain", SCORE_RUN.replace('"sqn"', '"ce"'))):
        (d / f"{name}.toml").write_text(text)
        train(load_run_config(d / f"{name}.toml", [], str(d / "data")), d / name, progress=False)
        runs[name] = d / name
    torch.set_num_threads(threads)
    return {"dir": d, "log": log, "data": d / "data", **runs}
