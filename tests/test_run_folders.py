"""Portable run folders: config.json's data path resolves from any working directory and after moving the run with
its data (a relative one stored relative to the run folder, an absolute one as given; older runs, relative to the
working directory, still read and resume),
and scoring's config_hash covers what makes the rows, never where the run, its data or the output live."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from seqrec.cli.main import main
from seqrec.runs.config import saved_config

RUN = """
[encoder]
kind = "sasrec"
dim = 16

[head]
variant = "ce"

[train]
batch_size = 32
max_steps = 4
eval_every = 4
log_every = 2
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory, score_world) -> Path:
    """A folder with data/ (a copy of the scoring tests' prepared data), run.toml and runs/r trained from inside
    it with relative paths (`seqrec train --data data --out runs/r`); read-only, tests copy it."""
    home = tmp_path_factory.mktemp("portable")
    shutil.copytree(score_world["data"], home / "data")
    (home / "run.toml").write_text(RUN)
    with contextlib.chdir(home):
        assert main(["train", "--config", "run.toml", "--data", "data", "--out", "runs/r"]) == 0
    return home


def copy_home(trained: Path, dest: Path) -> Path:
    shutil.copytree(trained, dest)
    return dest


def config_json(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())


def test_config_json_stores_the_data_relative_to_the_run(trained):
    assert config_json(trained / "runs" / "r")["data"] == "../../data"
    elsewhere = trained.parent
    with contextlib.chdir(elsewhere):
        assert Path(saved_config(trained / "runs" / "r").data) == (trained / "data").resolve()


def test_evaluate_score_and_resume_from_another_directory(trained, score_world, tmp_path):
    home = copy_home(trained, tmp_path / "home")
    run = (home / "runs" / "r").resolve()
    other = tmp_path / "other"
    other.mkdir()
    with contextlib.chdir(other):
        assert main(["evaluate", "--run", str(run)]) == 0
        assert main(["score", "--run", str(run), "--input", str(score_world["log"]), "--out", "scored"]) == 0
        assert main(["train", "--config", str(home / "run.toml"), "--data", str(home / "data"), "--out", str(run),
                     "--resume"]) == 0
    assert json.loads((run / "metrics.json").read_text())
    assert (other / "scored" / "_COMPLETE").exists()
    assert config_json(run)["data"] == "../../data"


def test_a_run_moved_with_its_data_still_works(trained, score_world, tmp_path):
    moved = copy_home(trained, tmp_path / "first").rename(tmp_path / "second")
    run = moved / "runs" / "r"
    with contextlib.chdir(tmp_path):
        assert main(["evaluate", "--run", str(run)]) == 0
        assert main(["score", "--run", str(run), "--input", str(score_world["log"]), "--out", "s"]) == 0
    with contextlib.chdir(moved):
        assert main(["train", "--config", "run.toml", "--data", "data", "--out", "runs/r", "--resume"]) == 0


def test_an_old_run_with_a_working_directory_path_still_reads_and_resumes(trained, tmp_path, capsys):
    home = copy_home(trained, tmp_path / "home")
    run = home / "runs" / "r"
    old = {**config_json(run), "data": "data"}          # as seqrec train wrote it before: relative to the cwd
    (run / "config.json").write_text(json.dumps(old, indent=2))
    with contextlib.chdir(home):
        assert saved_config(Path("runs/r")).data == "data"
        assert main(["evaluate", "--run", "runs/r"]) == 0
        assert main(["train", "--config", "run.toml", "--data", "data", "--out", "runs/r", "--resume"]) == 0
        capsys.readouterr()
        assert main(["train", "--config", "run.toml", "--data", "data", "--out", "runs/r", "--resume",
                     "--set", "train.lr=0.5"]) == 2   # a different config is still refused
    assert "--resume with a different config" in capsys.readouterr().err
    assert config_json(run)["data"] == "../../data"    # the resume rewrote it in today's form


# ------------------------------------------------------------------------------------------ config_hash
def scored_hash(run: Path, log: Path, out: Path) -> str:
    assert main(["score", "--run", str(run), "--input", str(log), "--out", str(out), "--workers", "1"]) == 0
    return json.loads((out / "manifest.json").read_text())["config_hash"]


def test_config_hash_ignores_out_and_where_the_run_lives(trained, score_world, tmp_path):
    home = copy_home(trained, tmp_path / "home")
    run, log = home / "runs" / "r", score_world["log"]
    first = scored_hash(run, log, tmp_path / "a")
    assert scored_hash(run, log, tmp_path / "deeper" / "b") == first          # another --out
    shutil.copytree(run, home / "runs" / "copy")                              # a copy of the run folder
    assert scored_hash(home / "runs" / "copy", log, tmp_path / "c") == first
    absolute = {**config_json(run), "data": str((home / "data").resolve())}   # the data path written otherwise
    (run / "config.json").write_text(json.dumps(absolute, indent=2))
    assert scored_hash(run, log, tmp_path / "d") == first
    with contextlib.chdir(home):                                              # or as an older run has it
        (run / "config.json").write_text(json.dumps({**absolute, "data": "data"}, indent=2))
        assert scored_hash(Path("runs/r"), log, tmp_path / "e") == first
    assert pq.read_table(tmp_path / "a" / "scores").equals(pq.read_table(tmp_path / "e" / "scores"))


def test_config_hash_follows_the_settings(trained, score_world, tmp_path):
    home = copy_home(trained, tmp_path / "home")
    run, log = home / "runs" / "r", score_world["log"]
    first = scored_hash(run, log, tmp_path / "a")
    changed = config_json(run)
    changed["train"]["lr"] = changed["train"]["lr"] * 2  # a setting of the run: a different hash
    (run / "config.json").write_text(json.dumps(changed, indent=2))
    assert scored_hash(run, log, tmp_path / "b") != first


def test_a_run_with_a_retrieval_model_resumes_from_another_directory(score_world, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(score_world["data"], home / "data")
    shutil.copytree(score_world["tower"], home / "tower")   # moved with its data
    shutil.copy(score_world["dir"] / "tower.toml", home / "run.toml")
    for folder, stored in ((home / "tower", "../data"), (home / "tower" / "retrieval", "../../data")):
        saved = json.loads((folder / "config.json").read_text())   # as if trained with a relative --data
        (folder / "config.json").write_text(json.dumps({**saved, "data": stored}, indent=2))
    retrieval = json.loads((home / "tower" / "retrieval" / "config.json").read_text())
    (home / "elsewhere").mkdir()
    with contextlib.chdir(home / "elsewhere"):   # the data named otherwise than at training time, from elsewhere
        args = ["train", "--config", "../run.toml", "--data", "../data", "--out", "../tower", "--resume"]
        assert main(args) == 0
        assert main([*args, "--set", "retrieval.lr=0.5"]) == 2   # a different [retrieval] is still refused
    after = json.loads((home / "tower" / "retrieval" / "config.json").read_text())
    assert {**after, "data": None} == {**retrieval, "data": None} and after["data"] == "../../data"


def test_an_absolute_data_path_is_kept_so_the_run_may_move_alone(trained, tmp_path):
    home = copy_home(trained, tmp_path / "home")
    with contextlib.chdir(home):
        assert main(["train", "--config", "run.toml", "--data", str(home / "data"), "--out", "abs"]) == 0
    assert config_json(home / "abs")["data"] == str(home / "data")
    shutil.copytree(home / "abs", tmp_path / "alone")
    assert main(["evaluate", "--run", str(tmp_path / "alone")]) == 0
