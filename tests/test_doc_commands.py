"""Every `seqrec ...` command line in README.md and docs/ parses with today's CLI: a documented flag that a
refactor renamed or dropped fails here, not in a user's script."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from seqrec.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def shell_blocks(text: str) -> list[str]:
    """The logical lines (backslash continuations joined) of the ```bash / ```sh blocks of a Markdown text."""
    lines: list[str] = []
    for block in re.findall(r"```(?:bash|sh|shell|console)\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        lines += [ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return lines


def seqrec_commands(line: str) -> list[list[str]]:
    """The argument lists of the `seqrec` invocations in one shell line (after `&&`, `;`, `torchrun ... -m`)."""
    out = []
    for part in re.split(r"&&|;|\|", line):
        try:
            words = shlex.split(part, comments=True)
        except ValueError:
            continue
        words = [w for w in words if "=" not in w or not re.fullmatch(r"[A-Z_]+=.*", w)]  # drop VAR=value prefixes
        if "-m" in words and words[words.index("-m") + 1: words.index("-m") + 2] == ["seqrec"]:
            words = words[words.index("-m") + 1:]
        if words and words[0] == "seqrec" and len(words) > 1:
            out.append(words[1:])
    return out


DOCUMENTED = [(page.relative_to(ROOT).as_posix(), argv) for page in PAGES
              for line in shell_blocks(page.read_text()) for argv in seqrec_commands(line)]


def test_the_docs_document_commands() -> None:
    commands = {argv[0] for _, argv in DOCUMENTED}
    assert {"prepare", "train", "evaluate", "score", "ope", "simulate", "abtest", "demo", "generate"} <= commands


@pytest.mark.parametrize("page, argv", DOCUMENTED, ids=[f"{p}:{' '.join(a)[:60]}" for p, a in DOCUMENTED])
def test_documented_command_parses(page: str, argv: list[str]) -> None:
    try:
        build_parser().parse_args(argv)
    except SystemExit as e:  # argparse's way of saying a flag or value is unknown
        pytest.fail(f"{page}: `seqrec {' '.join(argv)}` does not parse (exit {e.code})")


def test_parsing_check_catches_an_unknown_flag() -> None:
    (argv,) = seqrec_commands("seqrec train --config x.toml --data d --out r --no-such-flag")
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
    assert seqrec_commands("OMP_NUM_THREADS=1 torchrun --nproc_per_node=2 -m seqrec train --out r && ls")[0][0] == \
        "train"


def python_imports(text: str) -> list[str]:
    """The `from seqrec... import ...` / `import seqrec...` lines of the ```python blocks of a Markdown text."""
    out = []
    for block in re.findall(r"```python\n(.*?)```", text, re.S):
        out += [ln.strip() for ln in block.splitlines()
                if re.match(r"\s*(from seqrec[\w.]* import |import seqrec)", ln) and not ln.rstrip().endswith("(")]
    return out


IMPORTS = [(page.relative_to(ROOT).as_posix(), line) for page in PAGES for line in python_imports(page.read_text())]


@pytest.mark.parametrize("page, line", IMPORTS, ids=[f"{p}:{line[:70]}" for p, line in IMPORTS])
def test_documented_import_works(page: str, line: str) -> None:
    """A Python example in the docs names modules and functions that exist (a moved module fails here)."""
    try:
        exec(compile(line, page, "exec"), {})
    except ImportError as e:
        pytest.fail(f"{page}: `{line}` fails: {e}")


def test_import_check_catches_a_moved_module() -> None:
    (line,) = python_imports("```python\nfrom seqrec.train import run_config\n```\n")
    with pytest.raises(ImportError):
        exec(line, {})
