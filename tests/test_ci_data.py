"""CI cannot go green without the real data: under SEQREC_REQUIRE_DATA=1 (set by .ci/run) a real-data test whose
data is missing fails; without it, it skips saying why."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path: Path, require: bool) -> subprocess.CompletedProcess:
    test = tmp_path / "test_needs_data.py"
    test.write_text("def test_needs_data(shared_data):\n    assert shared_data.is_dir()\n")
    (tmp_path / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    env = {**os.environ, "SEQREC_SHARED_DATA": str(tmp_path / "no-such-folder")}
    env.pop("SEQREC_REQUIRE_DATA", None)
    if require:
        env["SEQREC_REQUIRE_DATA"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", str(test)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)


def test_missing_data_skips_by_default(tmp_path):
    r = _run(tmp_path, require=False)
    assert r.returncode == 0 and "1 skipped" in r.stdout and "no-such-folder is absent" in r.stdout, r.stdout


def test_missing_data_fails_when_required(tmp_path):
    r = _run(tmp_path, require=True)
    assert r.returncode == 1 and "1 error" in r.stdout and "Failed: real data folder" in r.stdout, r.stdout


def test_ci_requires_the_data_and_lists_skips():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "SEQREC_REQUIRE_DATA=1 pytest -ra" in ci and "exit 1" in ci.split('"$rc" -eq 5')[1]
