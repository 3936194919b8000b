"""The manual stays navigable: every relative link in README.md and docs/**/*.md resolves to a file (and a
`file.md#anchor` link to a heading of that file, as GitHub slugs it); README.md stays short and keeps the two
set-up commands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 200
VENV = "python3 -m venv .venv && . .venv/bin/activate && "
SETUP_COMMANDS = (
    VENV + "pip install -c constraints.txt -e . && seqrec demo --out runs/demo",
    VENV + "pip install -c constraints.txt -e '.[test,ann,ray]' && pytest",
)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")  # [text](target); images and autolinks aside
FENCE = re.compile(r"^(```|~~~)")


def doc_pages() -> list[Path]:
    """README.md and every Markdown page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (a link-like string in code is not a link)."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.lstrip()):
            fenced = not fenced
        elif not fenced:
            out.append(line)
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text: lower case, punctuation other than - and _ dropped, spaces -> -."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor in a Markdown text; repeated headings get -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for line in prose_lines(text):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(text: str) -> list[str]:
    """Relative link targets in a Markdown text (http(s):, mailto: and other schemes are not checked)."""
    return [t for line in prose_lines(text) for t in LINK.findall(line) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """The links of `page` that name no existing file, or a heading its target file lacks."""
    bad = []
    for target in links(page.read_text()):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists() or root.resolve() not in (dest, *dest.parents):
            bad.append(f"{target}: no file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
            bad.append(f"{target}: no heading #{anchor} in {dest.name}")
    return bad


def test_there_are_docs_pages() -> None:
    pages = doc_pages()
    assert len(pages) > 10
    assert (ROOT / "docs" / "architecture.md") in pages
    assert (ROOT / "docs" / "results" / "README.md") in pages


@pytest.mark.parametrize("page", doc_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken_links(page) == [], f"{page.relative_to(ROOT)} has broken links"


def test_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; the detail belongs in docs/"


def test_readme_keeps_the_two_setup_commands() -> None:
    text = (ROOT / "README.md").read_text()
    for command in SETUP_COMMANDS:
        assert command in text


def test_slugs_follow_github() -> None:
    ray = "Scoring on a Ray cluster: `seqrec score --engine ray`"
    assert slug(ray) == "scoring-on-a-ray-cluster-seqrec-score---engine-ray"
    assert slug("The prepared-dataset folder") == "the-prepared-dataset-folder"
    assert slug("From Python (the A/B test and the OPE check)") == "from-python-the-ab-test-and-the-ope-check"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}


def test_the_link_check_catches_broken_links(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "there.md").write_text("# Title\n\n## A section\n")
    page = tmp_path / "docs" / "page.md"
    page.write_text(
        "# Page\n\n"
        "[ok](there.md) [ok anchor](there.md#a-section) [self](#page) [web](https://example.com/x.md)\n"
        "[missing file](nowhere.md) [missing anchor](there.md#no-such-section) [missing self](#nope)\n"
        "[outside the repository](../../outside.md)\n"
        "```\n[in code](not-checked.md)\n```\n"
    )
    bad = broken_links(page, root=tmp_path)
    assert [b.split(":")[0] for b in bad] == ["nowhere.md", "there.md#no-such-section", "#nope", "../../outside.md"]
