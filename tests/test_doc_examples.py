"""Every example command of README.md and docs/ runs (tests/test_doc_commands.py only parses them): each page's
`seqrec ...` lines, in document order, in a fresh folder laid out with small inputs under the names the page
uses, in-process through `seqrec.cli.main.main`, each expected to exit 0 and to write what its --out / --json
names. What had to shrink (training steps, population sizes) and what is deliberately not run are the explicit
tables below; a documented command that is neither run nor listed fails `test_every_documented_command_is_run`."""

from __future__ import annotations

import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import pandas as pd
import pytest
from seqrec.datasets.synthetic import SyntheticConfig, generate_events, write_events
from test_doc_commands import DOCUMENTED, PAGES, ROOT, seqrec_commands
from uci_fake import fake_uci

from seqrec.cli.main import main

SHELL = ("bash", "sh", "shell", "console")

# ---- substitutions: kept to what must shrink for a test on two cores, each appended (argparse: the last wins) ----
SHRINK: dict[str, list[str]] = {
    # the shipped configs train for 1,000-5,000 steps (minutes): four steps still write checkpoints, evaluate,
    # fit the bandit and (with [retrieval]) train the two-tower
    "train": ["--set", "train.max_steps=4", "--set", "train.eval_every=2",
              "--set", "retrieval.max_steps=2", "--set", "retrieval.eval_every=2"],
    "demo": ["--events", "3000", "--steps", "4"],          # 200,000 events and 400 steps: about 20 s
    "generate": ["--events", "3000"],                      # 200,000 events
}
# the page folder's copy of experiments/configs: (file, table, key) -> value: the simulator's population (41,188
# customers, one per UCI row; `seqrec simulate`, `seqrec abtest` and simulate.md's Python) and the abtest's training
# (1,000 + 300 steps, about 50 s)
CONFIG_OVERRIDES: dict[tuple[str, str, str], str] = {
    ("campaign_sim.toml", "population", "size"): "300",
    ("abtest.toml", "train", "max_steps"): "12", ("abtest.toml", "train", "eval_every"): "6",
    ("abtest.toml", "train", "batch_size"): "64", ("abtest.toml", "retrieval", "max_steps"): "6",
    ("abtest.toml", "retrieval", "eval_every"): "3", ("abtest.toml", "ope", "resamples"): "100",
    ("abtest.toml", "offers", "epochs"): "1", ("abtest.toml", "gate", "resamples"): "100",
}
# placeholders a page uses for "your file": page -> {word: what the test's folder has}
PLACEHOLDERS: dict[str, dict[str, str]] = {"docs/config.md": {"EVENTS": "events.parquet"}}
# `torchrun ... -m seqrec train ...` runs as one process, in-process (torchrun itself: tests/test_distributed.py)
# a command that needs an optional extra (pyproject's [ann]) is not run without it: a substring -> the module
NEEDS_EXTRA: dict[str, str] = {"--index faiss": "faiss"}

# ---- deliberately not run: a substring of the documented line -> why ----
NOT_RUN: dict[str, str] = {
    "--nnodes=2": "two machines (multi-node torchrun); the launcher on one machine: tests/test_distributed.py",
    "--ray-address HEAD:6379": "needs a running Ray cluster on a machine called HEAD",
    "score --engine ray --run": "starts a local Ray: about 80 s on this 2-core machine, over this test's budget; "
                                "tests/test_ray_score.py runs the same engine on a local Ray",
}

# ---- what each page's commands need that the page does not make itself: seqrec commands run first ----
PREPARE_TAOBAO = "prepare --source taobao --input UserBehavior.csv --out data/taobao"
TRAIN_TAOBAO = "train --config experiments/configs/sasrec_sqn.toml --data data/taobao --out runs/taobao-sqn"
PREPARE_YC = "prepare --source sessionrec --input yoochoose-clicks-100k_train_full.txt --out data/yc"
SETUP: dict[str, list[str]] = {
    "docs/evaluate.md": [PREPARE_TAOBAO, TRAIN_TAOBAO,
                         "prepare --source sessionrec --input yoochoose-clicks-100k_train_full.txt --split loo "
                         "--out data/yc_loo",
                         "train --config experiments/configs/yc_loo_sasrec.toml --data data/yc_loo --out RUN"],
    "docs/ope.md": ["prepare --input events.parquet --out data/app",       # a prepared log with nudges
                    "train --config experiments/configs/sasrec_sqn.toml --data data/app --out runs/NAME"],
    "docs/retrieval.md": [PREPARE_YC,
                          # for the Python example: a run whose two-tower has the user features it encodes
                          "prepare --input events.parquet --out data/events",
                          "train --config experiments/configs/sasrec_sqn_retrieval.toml --data data/events "
                          "--out runs/NAME --set 'retrieval.user_categorical=[\"user_segment\"]' "
                          "--set 'retrieval.user_numeric=[\"user_age\"]'"],
    "docs/scaling.md": [PREPARE_TAOBAO],
    "docs/score.md": [PREPARE_TAOBAO, TRAIN_TAOBAO, "demo --out runs/demo",
                      "prepare --input app_log.tsv --sep '\\t' --map user=uid,session=sid,item=sku,time=ts,"
                      "event=action,device=device --time-unit ms --event-map open_detail=view,add_basket=cart,"
                      "share=0.3 --out data/app",
                      "train --config experiments/configs/sasrec_sqn.toml --data data/app --out runs/app"],
    "docs/train.md": [PREPARE_YC],
    "docs/offers.md": ["prepare --input events.parquet --out data/app",          # a prepared log with offers
                       "abtest --config experiments/configs/abtest.toml --out runs/abtest"],
    "docs/results/training.md": [PREPARE_YC, "train --config experiments/configs/sasrec.toml --data data/yc "
                                             "--out runs/rx_yc/sasrec-seed0"],
}

# a page whose file of some name must be another format: page -> {name: file of inputs/ copied over it}
INPUT_OVERRIDES: dict[str, dict[str, str]] = {"docs/ope.md": {"events.csv": "schema-events.csv"}}  # not RetailRocket

# ---- Python blocks, run in one namespace per page after its commands: api.md's is a whole example; the others
# sketch calls over names they leave to the reader, which PYTHON_PRELUDE defines (small, from the page's folder) ----
PYTHON_PRELUDE: dict[str, str] = {
    "docs/api.md": "",
    "docs/ope.md": """
import numpy as np
from seqrec.rl.ope.estimators import FixedPolicy
rng = np.random.default_rng(0)
A, N = 3, 400
action, propensity = rng.integers(0, A, N), np.full(N, 1 / A)
reward = (rng.random(N) < 0.1 + 0.1 * action).astype(float)
policy = FixedPolicy(np.array([0.2, 0.3, 0.5]))
""",
    "docs/score.md": """
import pyarrow.parquet as pq
events = pq.read_table("events.parquet")          # whole users of a validated log
""",
    "docs/nudges.md": """
import numpy as np
import pyarrow.parquet as pq
from seqrec.nudging.catalogue import load_catalogue, nudge_decisions
catalogue = load_catalogue()
rng = np.random.default_rng(0)
user_state, reward = rng.normal(size=64), 1.0
available = catalogue.mask(category="health")
states, masks = rng.normal(size=(5, 64)), np.ones((5, len(catalogue.ids)), bool)
events_table = pq.read_table("events.parquet")
P, A, d = 3, 4, 5                                   # the joint (product, nudge) block: 6 customers
values, allowed = rng.random((6, P, A)), np.ones((6, P, A), bool)
x, rewards = rng.normal(size=(6, d)), rng.random(6)
""",
    "docs/retrieval.md": """
from pathlib import Path
import torch
segments, ages = ["bargain_hunter", "explorer", "loyal"], [22, 41, 67]
windows = torch.tensor([[0] * 7 + [5, 9, 12], [0] * 9 + [3], [4] * 10])   # (B, T) left-padded
""",
    "docs/simulate.md": """
import numpy as np
from seqrec.campaign.config import load_sim_config
from seqrec.campaign.policies import RandomPolicy
from seqrec.campaign.simulator import Simulator
_sim = Simulator(load_sim_config("experiments/configs/campaign_sim.toml"))
policy = RandomPolicy(_sim)
rng = np.random.default_rng(1)
_log = _sim.run_policy(policy, contacts=50, rng=rng)
contacts, decisions = _log.contacts, _log.decisions
product = products = decisions.product
nudge = decisions.nudge
""",
}
# after a page's blocks, what their results must show (in their namespace)
PYTHON_CHECKS: dict[str, str] = {
    "docs/api.md": "assert len(scores) == 5 * scores.attrs['sessions'] > 0 and set(metrics) >= {'test', 'popularity'}",
    "docs/ope.md": "assert len(estimates) == 4 and est.n == N and est.low <= est.value <= est.high",
    "docs/score.md": "assert rows.num_rows == 10 * states.num_rows > 0",
    "docs/nudges.md": "assert fit.rows == len(decisions.arm) > 0 and (p[~available] == 0).all() and len(arms) == 5",
    "docs/retrieval.md": "assert tuple(c.ids.shape) == (3, 10) and (c.ids > 1).all()",
    "docs/simulate.md": "assert len(log.contacts) == 300 and sim.expected_rewards(contacts).shape[0] == 50",
}
# what a block names that the page's folder holds under another name, or what must shrink: page -> {text: text}
PYTHON_SUBSTITUTIONS: dict[str, dict[str, str]] = {
    "docs/score.md": {"runs/NAME": "runs/demo/run"},
    "docs/simulate.md": {"contacts=41188": "contacts=300"},   # the population is 300 customers (above)
}


@dataclass(frozen=True)
class Step:
    """One documented command: its shell line, and the argv it runs (`seqrec` argv, or ["python-c", CODE])."""

    line: str
    argv: tuple[str, ...]


def page_steps(text: str) -> list[Step]:
    """The `seqrec` commands (and `python -c` one-liners) of a page's code blocks in document order: every line of
    a shell block, and the lines of an untagged block that start with `seqrec `."""
    steps = []
    for lang, block in re.findall(r"```(\w*)\n(.*?)```", text, re.S):
        if lang not in SHELL and lang != "":
            continue
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = line.strip()
            if not line or line.startswith("#") or (lang == "" and not line.startswith("seqrec ")):
                continue
            steps += [Step(line, tuple(argv)) for argv in seqrec_commands(line)]
            m = re.match(r"python3? -c (\".*?\"|'.*?')", line)
            if m:
                steps.append(Step(line, ("python-c", shlex.split(m.group(1))[0])))
    return steps


STEPS = {page.relative_to(ROOT).as_posix(): page_steps(page.read_text()) for page in PAGES}


def not_run(step: Step) -> str | None:
    """Why a documented command is not run, or None."""
    return next((why for key, why in NOT_RUN.items() if key in step.line), None)


def test_every_documented_command_is_run() -> None:
    """Every command test_doc_commands.py parses is a step here, run or listed in NOT_RUN with a reason; the list
    stays short and each entry still names a documented command."""
    steps = {(page, s.argv) for page, ss in STEPS.items() for s in ss}
    assert [(p, a) for p, a in DOCUMENTED if (p, tuple(a)) not in steps] == []
    assert len(NOT_RUN) <= 3
    lines = [s.line for ss in STEPS.values() for s in ss]
    assert all(any(key in line for line in lines) for key in NOT_RUN), "a NOT_RUN entry names no documented command"
    assert sum(not_run(s) is None for ss in STEPS.values() for s in ss) >= 40
    assert all(any(w in s.argv for s in STEPS[page]) for page, words in PLACEHOLDERS.items() for w in words)


def test_step_extraction_reads_untagged_blocks_and_python_one_liners() -> None:
    text = ("```\nseqrec train --config run.toml --out r   # reads [train]\n|  seqrec prepare\n```\n"
            "```bash\npython -c \"print('x')\"\nseqrec evaluate --run r \\\n   --split test\n```\n"
            "```python\nseqrec = 1\n```\n")
    assert [s.argv for s in page_steps(text)] == [
        ("train", "--config", "run.toml", "--out", "r"), ("python-c", "print('x')"),
        ("evaluate", "--run", "r", "--split", "test")]


def test_every_python_example_runs() -> None:
    """Every page with a ```python block runs its blocks (with a prelude and a check); each listed page has one."""
    pages = {p for p in STEPS if python_blocks((ROOT / p).read_text())}
    assert pages == set(PYTHON_PRELUDE) == set(PYTHON_CHECKS)


def test_a_failing_or_silent_command_fails_its_page(tmp_path, capsys, monkeypatch) -> None:
    """The runner stops at a non-zero exit (naming page and command) and at a --out that was not written."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AssertionError, match=r"x.md: `seqrec prepare --input no.csv --out d` .* exited 2"):
        run_step("x.md", "seqrec prepare --input no.csv --out d", ["prepare", "--input", "no.csv", "--out", "d"],
                 capsys)
    monkeypatch.setattr(sys.modules[__name__], "main", lambda argv: 0)      # a command that exits 0, writing nothing
    with pytest.raises(AssertionError, match=r"exited 0 but did not write \['e.parquet'\]"):
        run_step("x.md", "seqrec generate --out e.parquet", ["generate", "--out", "e.parquet"], capsys)
    assert outputs(["train", "--config", "x/sasrec.toml"]) == [Path("runs/sasrec/checkpoints/last.pt")]
    assert outputs(["ope", "--log", "l", "--json", "e.json"]) == [Path("e.json")]


# ---- the inputs: one small generated log, written in every format the docs name ----
LOG = SyntheticConfig(users=150, items=40, seed=3)   # 3,260 events, 40 items, nudges with propensities


def _log() -> pd.DataFrame:
    df = generate_events(LOG).to_pandas()
    df["session"] = df.groupby(["user_id", "session_id"], sort=False).ngroup()   # globally unique session ids
    df["seconds"] = df["timestamp"].astype("int64") // 10**6
    return df


def write_inputs(d: Path) -> None:
    """Every input file a page names, each from the same generated log (so a run trained on one scores another)."""
    d.mkdir(parents=True)
    df = _log()
    ms, sec = df["seconds"] * 1000, df["seconds"]
    category = df["item_category"].astype("category").cat.codes
    behaviour = df["event_type"].map({"view": "pv", "like": "fav", "cart": "cart", "purchase": "buy"})
    taobao = pd.DataFrame({"u": df.user_id, "i": df.item_id, "c": category, "b": behaviour, "t": sec})
    taobao.to_csv(d / "UserBehavior.csv", header=False, index=False)
    taobao.to_csv(d / "new_events.csv", header=False, index=False)
    yc = pd.DataFrame({"SessionId": df.session, "ItemId": df.item_id, "Time": sec + 0.25})
    yc.to_csv(d / "yoochoose-clicks-100k_train_full.txt", sep="\t", index=False)
    last = yc.groupby("SessionId").tail(1)                   # the LOO protocol's second file: held-out events
    last.assign(Time=last.Time + 1.0).to_csv(d / "yoochoose-clicks-100k_test.txt", sep="\t", index=False)
    iso = df["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    pd.DataFrame({"s": df.session, "t": iso, "i": df.item_id, "c": 0}).to_csv(
        d / "yoochoose-clicks.dat", header=False, index=False)
    buys = df[df.event_type == "purchase"]
    pd.DataFrame({"s": buys.session, "t": iso[buys.index], "i": buys.item_id, "p": 1046, "q": 1}).to_csv(
        d / "yoochoose-buys.dat", header=False, index=False)
    rr_event = df["event_type"].map({"view": "view", "like": "view", "cart": "addtocart", "purchase": "transaction"})
    pd.DataFrame({"timestamp": ms, "visitorid": df.user_id, "event": rr_event, "itemid": df.item_id,
                  "transactionid": ""}).to_csv(d / "events.csv", index=False)
    rating = df["event_type"].map({"view": 3, "like": 5, "cart": 4, "purchase": 5})
    pd.DataFrame({"user_id:token": df.user_id, "item_id:token": df.item_id, "rating:float": rating,
                  "timestamp:float": sec}).to_csv(d / "ml-100k.inter", sep="\t", index=False)
    action = df["event_type"].map({"view": "open_detail", "like": "share", "cart": "add_basket", "purchase": "buy"})
    pd.DataFrame({"uid": df.user_id, "sid": df.session, "sku": df.item_id, "ts": ms, "action": action,
                  "device": "ios"}).to_csv(d / "app_log.tsv", sep="\t", index=False)
    pd.DataFrame({"u": df.user_id, "t": sec, "i": df.item_id}).to_csv(d / "export.csv", header=False, index=False)
    schema = df.drop(columns=["session", "seconds"])
    write_events(LOG, d / "events.parquet")
    write_events(LOG, d / "schema-events.csv")
    cut = schema["timestamp"].median()
    schema[schema.timestamp <= cut].to_parquet(d / "day1.parquet", index=False)
    schema[schema.timestamp > cut].to_parquet(d / "day2.parquet", index=False)
    shutil.copytree(ROOT / "experiments" / "configs", d / "experiments" / "configs")
    for (name, table, key), value in CONFIG_OVERRIDES.items():
        path = d / "experiments" / "configs" / name
        path.write_text(override_toml(path.read_text(), table, key, value))
    shutil.copy(ROOT / "experiments" / "configs" / "run.toml", d / "run.toml")


def override_toml(text: str, table: str, key: str, value: str) -> str:
    """`text` with `key = ...` of [table] set to `value` (the line must exist: a renamed key fails here)."""
    out, current, done = [], "", False
    for line in text.splitlines():
        head = re.match(r"\[([\w.]+)\]", line)
        current = head.group(1) if head else current
        if current == table and re.match(rf"{key}\s*=", line):
            line, done = f"{key} = {value}", True
        out.append(line)
    assert done, f"no {key} in [{table}]"
    return "\n".join(out) + "\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A folder with `inputs/` (every named input file and experiments/configs) and `shared/data/` (small files at
    the real-data paths the results pages use, and a UCI-like calibration file)."""
    root = tmp_path_factory.mktemp("docs")
    write_inputs(root / "inputs")
    shared = root / "shared" / "data"
    (shared / "taobao_userbehavior_slice").mkdir(parents=True)
    shutil.copy(root / "inputs" / "UserBehavior.csv",
                shared / "taobao_userbehavior_slice" / "UserBehavior_slice_20171126_0100-0310UTC.csv")
    (shared / "yoochoose_rsc15_clicks_100k_sessionrec").mkdir()
    shutil.copy(root / "inputs" / "yoochoose-clicks-100k_train_full.txt",
                shared / "yoochoose_rsc15_clicks_100k_sessionrec" / "yoochoose-clicks-100k_train_full.txt")
    (shared / "uci_bank_marketing").mkdir()
    fake_uci(shared / "uci_bank_marketing" / "bank-additional-full.csv", rows=1500)
    return root


# ---- running a page ----

def shrunk(argv: tuple[str, ...], page: str) -> list[str]:
    """The argv a step runs: placeholders replaced, the command's SHRINK flags appended."""
    words = [PLACEHOLDERS.get(page, {}).get(w, w) for w in argv]
    return words + SHRINK.get(words[0], [])


# the file that marks a command's --out folder complete (a folder that exists but lacks it is not written)
OUT_MARKER: dict[str, str] = {"prepare": "manifest.json", "score": "manifest.json", "train": "checkpoints/last.pt",
                              "demo": "scored/manifest.json", "abtest": "report.md"}


def outputs(argv: list[str]) -> list[Path]:
    """What a command says it writes: its --out (the folder's completion marker), --json, and evaluate's
    RUN/metrics.json (train without --out: runs/<config stem>)."""
    out = [Path(argv[i + 1]) / OUT_MARKER.get(argv[0], "") if w == "--out" else Path(argv[i + 1])
           for i, w in enumerate(argv[:-1]) if w in ("--out", "--json")]
    if argv[0] == "train" and "--out" not in argv:
        out.append(Path("runs") / Path(argv[argv.index("--config") + 1]).stem / OUT_MARKER["train"])
    if argv[0] == "evaluate":
        out.append(Path(argv[argv.index("--run") + 1]) / "metrics.json")
    return out


def run_step(page: str, line: str, argv: list[str], capsys) -> None:
    """Run one command in-process in the current folder; fail naming the page, the command and its error."""
    if argv[0] == "python-c":
        exec(compile(argv[1], f"{page}: python -c", "exec"), {})
        return
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 0, f"{page}: `{line}` (ran: seqrec {shlex.join(argv)}) exited {rc}:\n{err[-2000:]}"
    missing = [str(p) for p in outputs(argv) if not p.exists()]
    assert not missing, f"{page}: `{line}` exited 0 but did not write {missing}"


def python_blocks(text: str) -> list[str]:
    """The ```python blocks of a Markdown text, in order."""
    return re.findall(r"```python\n(.*?)```", text, re.S)


RUN_PAGES = [p for p, ss in STEPS.items() if any(not_run(s) is None for s in ss) or p in PYTHON_PRELUDE]


@pytest.mark.parametrize("page", RUN_PAGES)
def test_documented_commands_run(page: str, world: Path, capsys, monkeypatch) -> None:
    """The page's commands in document order (after its SETUP), each exit 0 with its outputs written; then the
    page's runnable Python examples."""
    here = world / re.sub(r"\W", "_", page)
    shutil.copytree(world / "inputs", here)
    for name, source in INPUT_OVERRIDES.get(page, {}).items():
        shutil.copy(here / source, here / name)
    monkeypatch.chdir(here)
    monkeypatch.setenv("SEQREC_SHARED_DATA", str(world / "shared" / "data"))
    for line in SETUP.get(page, []):
        run_step(page, f"(setup) seqrec {line}", shrunk(tuple(shlex.split(line)), page), capsys)
    without = []
    for step in STEPS[page]:
        extra = next((m for key, m in NEEDS_EXTRA.items() if key in step.line and not find_spec(m)), None)
        if extra:
            without.append(f"`{step.line}` ({extra} is not installed)")
        elif not_run(step) is None:
            run_step(page, step.line, shrunk(step.argv, page) if step.argv[0] != "python-c" else list(step.argv),
                     capsys)
    if page in PYTHON_PRELUDE:
        namespace = {"__name__": "__doc_example__"}
        exec(compile(PYTHON_PRELUDE[page], f"{page}: prelude", "exec"), namespace)
        blocks = python_blocks((ROOT / page).read_text())
        stale = [old for old in PYTHON_SUBSTITUTIONS.get(page, {}) if not any(old in b for b in blocks)]
        assert not stale, f"{page}: PYTHON_SUBSTITUTIONS names text the page no longer has: {stale}"
        for block in blocks:
            for old, new in PYTHON_SUBSTITUTIONS.get(page, {}).items():
                block = block.replace(old, new)
            exec(compile(block, f"{page}: python block", "exec"), namespace)
        exec(compile(PYTHON_CHECKS[page], f"{page}: check", "exec"), namespace)
    if without:
        pytest.skip(f"{page}: the other commands ran; not run: {'; '.join(without)}")
