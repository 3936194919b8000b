"""The run file (seqrec/runs/file_config.py, docs/config.md): every table checked by every command, [prepare],
[bandit] and [score] recorded in config.json only when set, the precedence of `seqrec score`'s settings, the
run's [bandit] in RUN/bandit.json and in the scored propensities, and every shipped config loading."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from seqrec.rl.bandits.fit import load_bandit
from seqrec.rl.bandits.policies import BanditConfig

from seqrec.cli.main import build_parser, main
from seqrec.core.config import ConfigError
from seqrec.runs.config import run_config, saved_config
from seqrec.runs.file_config import check_run_file, prepare_table
from seqrec.runs.score_config import ScoreConfig

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "experiments" / "configs"
RUN_TOML = CONFIGS / "run.toml"
TINY = ["--set", "train.max_steps=4", "--set", "train.eval_every=4", "--set", "train.batch_size=32",
        "--set", "retrieval.max_steps=2", "--set", "retrieval.eval_every=2", "--set", "retrieval.batch_size=32",
        "--set", "encoder.dim=16", "--set", 'train.device="cpu"']


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """run.toml through the three commands on a tiny synthetic log: prepared data, a run, its scores."""
    d = tmp_path_factory.mktemp("runfile")
    assert main(["prepare", "--config", str(RUN_TOML), "--source", "synthetic", "--events", "5000",
                 "--out", str(d / "data")]) == 0
    log = next((d / "data" / "generated").glob("*.parquet"))
    assert main(["train", "--config", str(RUN_TOML), "--data", str(d / "data"), "--out", str(d / "run"), *TINY]) == 0
    assert main(["score", "--config", str(RUN_TOML), "--run", str(d / "run"), "--input", str(log),
                 "--out", str(d / "scored")]) == 0
    return {"dir": d, "data": d / "data", "log": log, "run": d / "run", "scored": d / "scored"}


def _scores(folder: Path):
    return pq.read_table(sorted((folder / "scores").glob("part-*.parquet"))).to_pandas()


# ------------------------------------------------------------------------------------------ run.toml end to end


def test_run_toml_drives_prepare_train_and_score(world):
    manifest = json.loads((world["data"] / "manifest.json").read_text())
    assert manifest["config"]["window"] == 10 and manifest["config"]["source"] == "synthetic"  # the flag won
    saved = json.loads((world["run"] / "config.json").read_text())
    file = tomllib.loads(RUN_TOML.read_text())
    assert saved["prepare"] == file["prepare"]                 # recorded as the file gave it
    assert "bandit" not in saved and "score" not in saved      # both at their defaults: nothing to record
    assert saved["retrieval"]["enabled"] and saved["rerank"]["w_q"] == 0.5
    assert json.loads((world["run"] / "bandit.json").read_text())["config"]["kind"] == "epsilon_greedy"
    rows = _scores(world["scored"])
    assert rows["rank"].max() == 10 and len(rows) == json.loads((world["scored"] / "manifest.json").read_text())["rows"]
    assert saved_config(world["run"]).prepare == file["prepare"]


def test_a_run_of_none_of_the_new_tables_writes_the_config_json_it_always_did(world, tmp_path):
    raw = {k: v for k, v in tomllib.loads(RUN_TOML.read_text()).items()
           if k not in ("prepare", "bandit", "score", "d3rlpy", "algorithm")}
    d = run_config(raw, [], str(world["data"])).to_dict()
    assert set(d) == {"data", "encoder", "head", "train", "retrieval", "index", "rerank"}
    old = {k: v for k, v in d.items() if k not in ("retrieval", "index", "rerank")}   # an older run folder
    (tmp_path / "config.json").write_text(json.dumps(old))
    cfg = saved_config(tmp_path)
    assert cfg.bandit == BanditConfig() and cfg.score == ScoreConfig() and cfg.prepare == {}
    assert cfg.to_dict() == old


def test_new_tables_round_trip_through_config_json(world, tmp_path):
    raw = tomllib.loads(RUN_TOML.read_text())
    raw["bandit"] = {"kind": "thompson", "mc_samples": 50}
    raw["score"] = {"top": 4, "candidates": 30}
    cfg = run_config(raw, [], str(world["data"]))
    d = cfg.to_dict()
    assert d["bandit"]["kind"] == "thompson" and d["bandit"]["mc_samples"] == 50 and "seed" not in d["bandit"]
    assert d["score"]["top"] == 4 and d["score"]["candidates"] == 30
    (tmp_path / "config.json").write_text(json.dumps(d))
    assert saved_config(tmp_path) == cfg and saved_config(tmp_path).to_dict() == d   # --resume compares these


# ------------------------------------------------------------------------------------------ whole-file checks


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.update(scroe={}), "unknown section [scroe]; valid sections: data, prepare, encoder"),
    (lambda r: r["bandit"].update(kind="oracle"), "kind must be one of epsilon_greedy"),
    (lambda r: r["bandit"].update(decay=0.5), "unknown key bandit.decay; valid keys in [bandit]: alpha, epsilon"),
    (lambda r: r["bandit"].update(seed=3), "bandit.seed comes from the run's seed"),
    (lambda r: r["bandit"].update(kind="linucb"), "a run's bandit is fitted offline without contexts"),
    (lambda r: r["score"].update(top=0), "top must be an int >= 1, got 0"),
    (lambda r: r["score"].update(tops=3), "unknown key score.tops; valid keys in [score]: batch_size"),
    (lambda r: r["score"].update(index="annoy"), "index must be one of exact, faiss"),
    (lambda r: r["prepare"].update(windows=3), "unknown key prepare.windows; valid keys in [prepare]: bucket_rows"),
    (lambda r: r["prepare"].update(format="xml"), "prepare.format must be one of auto, csv, parquet, jsonl"),
    (lambda r: r["prepare"].update(source="nope"), "prepare.source 'nope' is not one of events"),
    (lambda r: r["encoder"].update(width=3), "unknown key encoder.width; valid keys in [encoder]: blocks"),
    (lambda r: r["data"].update(folder="x"), "unknown key data.folder; valid keys in [data]: dir"),
    (lambda r: r.update(algorithm="magic"), "algorithm must be one of seqrec, d3rlpy.dqn"),
])
def test_every_table_is_checked_by_every_command(world, edit, message, tmp_path, capsys):
    raw = tomllib.loads(RUN_TOML.read_text())
    edit(raw)
    with pytest.raises(ConfigError) as e:
        check_run_file(raw)
    assert message in str(e.value)
    bad = tmp_path / "bad.toml"
    bad.write_text(_toml(raw))
    commands = [["prepare", "--config", str(bad), "--source", "synthetic", "--events", "500", "--out",
                 str(tmp_path / "d")],
                ["train", "--config", str(bad), "--data", str(world["data"]), "--out", str(tmp_path / "r")],
                ["score", "--config", str(bad), "--run", str(world["run"]), "--input", str(world["log"]),
                 "--out", str(tmp_path / "s")]]
    for argv in commands:
        capsys.readouterr()
        assert main(argv) == 2, argv[0]
        err = capsys.readouterr().err
        assert err.startswith(f"seqrec {argv[0]}: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "d").exists() and not (tmp_path / "r" / "checkpoints" / "last.pt").exists()


def test_prepare_table_splits_reader_options():
    config, reader = prepare_table({"window": 4, "map": {"user": "uid"}, "sep": "tab", "header": False})
    assert config == {"window": 4} and reader == {"map": {"user": "uid"}, "sep": "tab", "header": False}


# ------------------------------------------------------------------------------------------ score precedence


def _score_args(world, *extra: str):
    return build_parser().parse_args(["score", "--run", str(world["run"]), "--input", str(world["log"]), "--out", "x",
                                 *extra])


def test_score_settings_precedence(world, tmp_path):
    from seqrec.cli.score import score_settings

    assert score_settings(_score_args(world)) == ScoreConfig()          # today's flag defaults are [score]'s
    run = tmp_path / "run"
    run.mkdir()
    recorded = saved_config(world["run"]).to_dict()
    recorded["score"] = {"top": 5, "candidates": 40, "seed": 7}
    (run / "config.json").write_text(json.dumps(recorded))
    file = tmp_path / "f.toml"
    file.write_text("[score]\ntop = 6\nbatch_size = 99\n")
    args = build_parser().parse_args(["score", "--run", str(run), "--input", "e", "--out", "x"])
    assert score_settings(args) == ScoreConfig(top=5, candidates=40, seed=7)          # the run's record
    args.config = file
    assert score_settings(args) == ScoreConfig(top=6, candidates=40, seed=7, batch_size=99)   # file over record
    args.top, args.seed, args.checkpoint = 3, 1, "last"
    assert score_settings(args) == ScoreConfig(top=3, candidates=40, seed=1, batch_size=99, checkpoint="last")


# ------------------------------------------------------------------------------------------ the run's [bandit]


def _arm_index(world, run: Path) -> tuple[np.ndarray, list[str]]:
    from seqrec.serve.scoring import load_bundle

    bundle = load_bundle(run, ScoreConfig())
    return bundle.arm_mask, list(bundle.arm_ids)


def test_bandit_table_sets_the_fitted_bandit_and_the_scored_propensities(world, tmp_path):
    out = tmp_path / "ucb"
    assert main(["train", "--config", str(RUN_TOML), "--data", str(world["data"]), "--out", str(out), *TINY,
                 "--set", 'bandit.kind="ucb1"', "--set", "bandit.alpha=0.5"]) == 0
    meta = json.loads((out / "bandit.json").read_text())
    assert meta["config"]["kind"] == "ucb1" and meta["config"]["alpha"] == 0.5
    assert json.loads((out / "config.json").read_text())["bandit"]["kind"] == "ucb1"
    bandit = load_bandit(out)
    assert bandit.config.kind == "ucb1" and bandit.updates > 0
    assert main(["score", "--run", str(out), "--input", str(world["log"]), "--out", str(tmp_path / "s")]) == 0
    ucb_rows = _scores(tmp_path / "s")
    # expected by hand from the fitted bandit: the probability of each row's nudge among its item's allowed arms
    vocab = pq.read_table(world["data"] / "vocab.parquet").to_pandas()
    index_of = dict(zip(vocab["item_id"].astype(str), vocab["index"]))
    mask, arms = _arm_index(world, out)
    probs = bandit.probabilities_batch(None, mask)                                          # (I, A)
    want = [probs[index_of[str(i)], arms.index(n)] for i, n in zip(ucb_rows["item_id"], ucb_rows["nudge_id"])]
    assert np.allclose(ucb_rows["propensity"].to_numpy(), want)
    base = _scores(world["scored"])
    assert not np.allclose(np.sort(base["propensity"].to_numpy()), np.sort(ucb_rows["propensity"].to_numpy()))


def test_a_run_without_bandit_json_draws_from_a_fresh_bandit_of_its_bandit_table(world, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    (run / "bandit.json").unlink()
    (run / "bandit.npz").unlink()
    cfg = json.loads((run / "config.json").read_text())
    assert main(["score", "--run", str(run), "--input", str(world["log"]), "--out", str(tmp_path / "eg")]) == 0
    eg = json.loads((tmp_path / "eg" / "manifest.json").read_text())
    assert eg["policy"] == "uniform over the allowed arms (no RUN/bandit.json: a fresh epsilon-greedy bandit)"
    (run / "config.json").write_text(json.dumps({**cfg, "bandit": {"kind": "thompson", "mc_samples": 20}}))
    assert main(["score", "--run", str(run), "--input", str(world["log"]), "--out", str(tmp_path / "th")]) == 0
    th = json.loads((tmp_path / "th" / "manifest.json").read_text())
    assert th["policy"].startswith("a fresh thompson bandit") and th["config_hash"] != eg["config_hash"]
    mask, arms = _arm_index(world, run)
    fresh = replace(BanditConfig(kind="thompson", mc_samples=20), seed=0).create(arms)   # score's seed, 0
    unique, inverse = np.unique(mask, axis=0, return_inverse=True)    # one Monte-Carlo estimate per distinct mask
    probs = fresh.probabilities_batch(None, unique)[inverse.reshape(-1)]                  # (I, A)
    assert not np.allclose(probs[mask], (mask / mask.sum(1, keepdims=True))[mask])      # not uniform
    rows = _scores(tmp_path / "th")
    vocab = pq.read_table(world["data"] / "vocab.parquet").to_pandas()
    index_of = dict(zip(vocab["item_id"].astype(str), vocab["index"]))
    want = [probs[index_of[str(i)], arms.index(n)] for i, n in zip(rows["item_id"], rows["nudge_id"])]
    assert np.allclose(rows["propensity"].to_numpy(), want)


# ------------------------------------------------------------------------------------------ shipped configs, torch


def _configs(pattern: str) -> list[Path]:
    return sorted(CONFIGS.glob(pattern))


def test_every_shipped_config_loads_with_its_command(world):
    from seqrec.abtest.config import load_abtest_config
    from seqrec.campaign.config import load_sim_config
    from seqrec.core.config import load_toml
    from seqrec.runs.config import load_run_config

    seen = set()
    for path in _configs("*.toml"):
        seen.add(path.name)
        if path.name == "abtest.toml":
            load_abtest_config(path)
        elif path.name == "campaign_sim.toml":
            load_sim_config(path)
        elif path.name.endswith("_prepare.toml"):
            raw = load_toml(path)
            check_run_file(raw)
            assert set(raw) == {"prepare"}
        else:
            cfg = load_run_config(path, [], str(world["data"]))
            assert cfg.encoder.num_items == json.loads((world["data"] / "manifest.json").read_text())["catalogue_size"]
    assert {"run.toml", "abtest.toml", "campaign_sim.toml", "rc15_prepare.toml", "sasrec_sqn.toml"} <= seen


def test_prepare_and_generate_do_not_import_torch(tmp_path):
    prep = tmp_path / "prep.toml"
    prep.write_text((CONFIGS / "rc15_prepare.toml").read_text().replace('"rc15"', '"events"'))
    code = ("import sys; from seqrec.cli.main import main; import seqrec.cli.prepare, seqrec.cli.generate; "
            f"assert main(['prepare', '--config', {str(prep)!r}, '--source', 'synthetic', '--events', '800', "
            f"'--out', {str(tmp_path / 'd')!r}]) == 0; "
            f"assert main(['generate', '--events', '300', '--out', {str(tmp_path / 'e.parquet')!r}]) == 0; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def _toml(d: dict) -> str:
    """A run-file dict back to TOML text (tables one level deep, inline tables inside them)."""
    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {val(x)}" for k, x in v.items()) + " }"
        if isinstance(v, float) and v == float("inf"):
            return "inf"
        return json.dumps(v)
    lines = [f"{k} = {val(v)}" for k, v in d.items() if not isinstance(v, dict)]
    for name, body in d.items():
        if isinstance(body, dict):
            lines += [f"[{name}]", *(f"{k} = {val(v)}" for k, v in body.items())]
    return "\n".join(lines) + "\n"
