"""Output-side errors: an --out that cannot be written is one line `seqrec CMD: error: <path>: <reason>` and exit
status 2 in every command that writes (`seqrec --debug` lets the traceback through)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from uci_fake import fake_uci  # tests/uci_fake.py (pytest puts tests/ on sys.path)

from seqrec.cli.main import main
from seqrec.core.config import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """A tiny generated log and a file standing where folders are asked for."""
    d = tmp_path_factory.mktemp("errors")
    assert main(["generate", "--out", str(d / "ev.parquet"), "--events", "1500"]) == 0
    (d / "afile").write_text("in the way\n")
    return {"dir": d, "log": d / "ev.parquet", "file": d / "afile",
            "uci": fake_uci(d / "bank-additional-full.csv", rows=400)}


def commands(w: dict, score_world: dict | None, out: Path) -> dict[str, list[str]]:
    """Every writing command, with `out` as its output."""
    s = str(out)
    run = ["train", "--config", str(CONFIGS / "sasrec.toml"), "--out", s, "--set", "train.max_steps=2"]
    return {
        "generate": ["generate", "--out", str(out / "ev.parquet") if out.suffix == "" else s, "--events", "100"],
        "prepare": ["prepare", "--input", str(w["log"]), "--out", s],
        "train": run + ["--data", str(score_world["data"])] if score_world else run,
        "score": ["score", "--run", str(score_world["plain"]) if score_world else "x", "--input", str(w["log"]),
                  "--out", s],
        "simulate": ["simulate", "--config", str(CONFIGS / "campaign_sim.toml"), "--out", str(out / "c.parquet"),
                     "--customers", "100", "--calibration", str(w["uci"])],
        "abtest": ["abtest", "--config", str(CONFIGS / "abtest.toml"), "--out", s, "--customers", "100",
                   "--calibration", str(w["uci"]), "--no-progress"],
        "demo": ["demo", "--out", s, "--events", "1500", "--steps", "2", "--no-progress"],
    }


@pytest.mark.parametrize("command", ["generate", "prepare", "train", "score", "simulate", "abtest", "demo"])
def test_out_under_a_file_is_one_line(world, score_world, capsys, command):
    out = world["file"] / "sub"
    assert main(commands(world, score_world, out)[command]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"seqrec {command}: error: {world['file']}") and err.endswith(": not a directory\n"), err
    assert err.count("\n") == 1 and "Traceback" not in err and "Errno" not in err


@pytest.mark.parametrize("command", ["prepare", "train", "score", "demo"])
def test_out_naming_a_file_is_one_line(world, score_world, capsys, command):
    assert main(commands(world, score_world, world["file"])[command]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"seqrec {command}: error: {world['file']}"), err
    assert err.endswith((": file exists\n", ": not a directory\n")), err
    assert err.count("\n") == 1 and "Errno" not in err
    assert world["file"].read_text() == "in the way\n"


def test_generate_into_an_existing_file_name_as_a_folder(world, capsys):
    assert main(["generate", "--out", str(world["file"] / "ev.parquet"), "--events", "100"]) == 2
    assert capsys.readouterr().err == f"seqrec generate: error: {world['file']}: file exists\n"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes through any mode")
def test_unwritable_folder_is_one_line(world, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        assert main(["prepare", "--input", str(world["log"]), "--out", str(locked / "data")]) == 2
    finally:
        locked.chmod(0o700)
    err = capsys.readouterr().err
    assert err.startswith("seqrec prepare: error: ") and err.endswith(": permission denied\n"), err


def test_debug_lets_the_traceback_through(world):
    with pytest.raises(FileExistsError):
        main(["--debug", "prepare", "--input", str(world["log"]), "--out", str(world["file"])])
    with pytest.raises(NotADirectoryError):
        main(["--debug", "prepare", "--input", str(world["log"]), "--out", str(world["file"] / "x")])


def test_config_errors_keep_their_line_and_debug_raises_them(world, capsys):
    missing = str(world["dir"] / "nowhere.toml")
    assert main(["train", "--config", missing]) == 2
    assert capsys.readouterr().err == f"seqrec train: error: {missing}: no such config file\n"
    with pytest.raises(ConfigError, match="no such config file"):
        main(["--debug", "train", "--config", missing])


# ------------------------------------------------------------------------------------------ checkpoints
def damaged_run(score_world: dict, tmp_path: Path, how: str) -> tuple[Path, Path]:
    """A copy of the plain scoring run whose best checkpoint is cut in half ('truncated') or re-saved with a
    pickled object beside the weights ('pickled'); the run and the damaged file."""
    import torch

    run = tmp_path / "run"
    shutil.copytree(score_world["plain"], run)
    best = run / "checkpoints" / "best.pt"
    if how == "truncated":
        data = best.read_bytes()
        best.write_bytes(data[: len(data) // 2])
    else:
        payload = torch.load(best, weights_only=True)
        torch.save({**payload, "where": Path("somewhere")}, best)  # a Path is no tensor: weights-only refuses it
    return run, best


REASONS = {"truncated": "truncated or not a checkpoint",
           "pickled": "holds pickled objects, not only weights: refusing to load it"}


@pytest.mark.parametrize("how", ["truncated", "pickled"])
def test_load_checkpoint_names_the_file(score_world, tmp_path, how):
    from seqrec.training.checkpoints import load_checkpoint

    _, best = damaged_run(score_world, tmp_path, how)
    with pytest.raises(ConfigError) as e:
        load_checkpoint(best, "cpu")
    assert str(e.value) == f"{best}: {REASONS[how]}"
    assert "weights_only" not in str(e.value)


@pytest.mark.parametrize("how", ["truncated", "pickled"])
@pytest.mark.parametrize("command", ["evaluate", "score"])
def test_damaged_checkpoint_is_one_line(score_world, tmp_path, capsys, how, command):
    run, best = damaged_run(score_world, tmp_path, how)
    argv = {"evaluate": ["evaluate", "--run", str(run)],
            "score": ["score", "--run", str(run), "--input", str(score_world["log"]), "--out", str(tmp_path / "s")]}
    assert main(argv[command]) == 2
    assert capsys.readouterr().err == f"seqrec {command}: error: {best}: {REASONS[how]}\n"


def test_empty_or_text_file_is_not_a_checkpoint(tmp_path):
    from seqrec.training.checkpoints import load_checkpoint

    for name, data in (("empty.pt", b""), ("text.pt", b"hello\n")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ConfigError, match="truncated or not a checkpoint"):
            load_checkpoint(tmp_path / name, "cpu")


def test_load_checkpoint_reads_a_good_one(score_world):
    import torch

    from seqrec.training.checkpoints import load_checkpoint

    best = score_world["plain"] / "checkpoints" / "best.pt"
    got, want = load_checkpoint(best, "cpu"), torch.load(best, weights_only=True)
    assert got.keys() == want.keys()
    assert all(torch.equal(got["model"][k], want["model"][k]) for k in want["model"])
