"""The secret-hygiene line adds up every xdist worker's counts, and a counted leak fails the run.

Each case runs a small pytest session in a subprocess with the real plugin (``-p
tests.secret_hygiene``), whose tests count into the ledger as ``assert_no_secret_leaks`` does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.operator_process import REPO_ROOT

COUNTING_TESTS = """
import pytest
from tests.secret_hygiene import LEAK_LEDGER

@pytest.mark.parametrize("case", range(6))
def test_scan(case):
    LEAK_LEDGER.searched += 3
    LEAK_LEDGER.secrets += 2
    LEAK_LEDGER.leaks += {leaks_in_case_5} if case == 5 else 0
"""


def run_session(tmp_path: Path, *args: str, leaks_in_case_5: int = 0) -> tuple[int, str]:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_counting.py").write_text(
        COUNTING_TESTS.format(leaks_in_case_5=leaks_in_case_5)
    )
    plugins = ["-p", "tests.secret_hygiene", "-p", "no:cacheprovider"]
    where = ["--rootdir", str(tmp_path), str(tmp_path)]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", *plugins, "-q", *where, *args],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "two-workers"])
def test_the_line_counts_every_test_of_every_worker(tmp_path: Path, workers: list[str]) -> None:
    code, output = run_session(tmp_path, *workers)
    assert code == 0, output
    assert "6 passed" in output
    assert (
        "secret hygiene: searched 18 logs/Event/Invitation dumps for 12 secret values, 0 leaks"
        in (output)
    )


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "two-workers"])
def test_a_leak_counted_on_any_worker_fails_the_run(tmp_path: Path, workers: list[str]) -> None:
    code, output = run_session(tmp_path, *workers, leaks_in_case_5=1)
    assert code == pytest.ExitCode.TESTS_FAILED, output
    assert "12 secret values, 1 leaks" in output
