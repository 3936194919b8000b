"""The `seqrec` command: one module per subcommand, the shared exit statuses, and no torch where none is needed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from seqrec.cli import generate
from seqrec.cli.main import COMMANDS, build_parser, main

NAMES = ("generate", "prepare", "train", "evaluate", "ope", "simulate", "score", "demo", "abtest")


def test_one_module_per_command_in_help_order():
    assert tuple(m.__name__.rsplit(".", 1)[1] for m in COMMANDS) == NAMES
    choices = build_parser()._subparsers._group_actions[0].choices
    assert tuple(choices) == NAMES
    for module in COMMANDS:
        assert choices[module.__name__.rsplit(".", 1)[1]].get_default("func") is module.run


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage: seqrec" in capsys.readouterr().out


@pytest.mark.parametrize("error, status, line", [
    (ValueError("bad value"), 2, "seqrec generate: error: bad value\n"),
    (KeyboardInterrupt(), 130, "seqrec generate: interrupted\n"),
])
def test_errors_are_one_line_and_a_status(monkeypatch, tmp_path, capsys, error, status, line):
    def boom(args):
        raise error

    monkeypatch.setattr(generate, "run", boom)
    parser = build_parser()
    args = parser.parse_args(["generate", "--out", str(tmp_path / "e.parquet")])
    assert args.func is boom
    assert main(["generate", "--out", str(tmp_path / "e.parquet")]) == status
    assert capsys.readouterr().err == line


def test_python_dash_m_runs_the_command():
    a = subprocess.run([sys.executable, "-m", "seqrec", "prepare", "--help"], capture_output=True, text=True)
    assert a.returncode == 0 and a.stdout.startswith("usage: seqrec prepare")


@pytest.mark.parametrize("command", ["prepare", "generate", "simulate", "ope", "abtest"])
def test_help_and_the_module_import_no_torch(command):
    code = (f"import sys; import seqrec.cli.{command}; from seqrec.cli.main import main\n"
            f"try:\n    main(['{command}', '--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"
