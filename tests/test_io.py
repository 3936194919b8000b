"""seqrec.core.io: an atomic write replaces the target whole or leaves it untouched, never half-written."""

from __future__ import annotations

import json

import pytest

from seqrec.core.io import atomic_write, atomic_write_json, atomic_write_text, temporary_path


def test_atomic_write_replaces_the_target_and_returns_the_writers_value(tmp_path):
    target = tmp_path / "note.txt"
    target.write_text("old")
    assert atomic_write(target, lambda tmp: tmp.write_text("new")) == 3
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["note.txt"]


def test_a_writer_that_fails_midway_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "part.bin"
    target.write_bytes(b"complete old content")

    def half_then_fail(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half of the new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"complete old content"
    assert not temporary_path(target).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part.bin"]


def test_an_interrupted_first_write_creates_no_target(tmp_path):
    target = tmp_path / "new.json"

    def interrupted(tmp):
        tmp.write_text("{")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, interrupted)
    assert list(tmp_path.iterdir()) == []


def test_text_and_json_helpers(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "héllo\n")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    atomic_write_json(tmp_path / "b.json", {"x": [1, 2]}, indent=2)
    assert (tmp_path / "b.json").read_text() == '{\n  "x": [\n    1,\n    2\n  ]\n}'
    assert json.loads((tmp_path / "b.json").read_text()) == {"x": [1, 2]}
    assert temporary_path(tmp_path / "b.json") == tmp_path / ".b.json.tmp"


def test_checkpoint_archive_keeps_its_name_whatever_the_temporary_file(tmp_path) -> None:
    """torch.save names the zip archive inside a checkpoint after the file it writes, and scoring's config hash
    covers the checkpoint's bytes: the atomic write must keep the name checkpoints always had ("best.pt/...",
    from best.pt.tmp), and leave no temporary file."""
    import zipfile

    import torch

    from seqrec.training.checkpoints import save_checkpoint

    payload = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "step": 3}
    save_checkpoint(tmp_path / "best.pt", payload, {"step": 3})
    names = zipfile.ZipFile(tmp_path / "best.pt").namelist()
    assert names and all(n.startswith("best.pt/") for n in names)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.json", "best.pt"]
    assert torch.load(tmp_path / "best.pt", weights_only=True)["model"]["w"].equal(payload["model"]["w"])
