"""The loopback Git server speaks smart HTTP, and ``commit`` returns what a clone sees."""

from __future__ import annotations

import subprocess
import urllib.request
from pathlib import Path

from tests.gitops.git_server import BRANCH, GitServer


def clone_head(url: str, target: Path) -> str:
    subprocess.run(
        ["git", "clone", "--quiet", "--branch", BRANCH, url, str(target)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return subprocess.run(
        ["git", "-C", str(target), "rev-parse", "HEAD"],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.strip()


def test_commits_reach_a_clone_over_smart_http(tmp_path: Path) -> None:
    with GitServer(tmp_path / "server") as git:
        assert git.url.startswith("http://127.0.0.1:")
        first = git.commit({"apps/a.yaml": "a: 1\n", "apps/b.yaml": "b: 2\n"}, "two files")
        second = git.commit({"apps/a.yaml": None}, "one removed")
        assert first != second

        advertised = f"{git.url}/info/refs?service=git-upload-pack"
        with urllib.request.urlopen(advertised, timeout=10) as answer:  # noqa: S310 - http only
            # Smart HTTP; the dumb protocol, which Flux's Go git library lacks, is text/plain.
            content_type = answer.headers["Content-Type"]
            assert content_type == "application/x-git-upload-pack-advertisement"

        assert clone_head(git.url, tmp_path / "clone") == second
        assert not (tmp_path / "clone" / "apps" / "a.yaml").exists()
        assert (tmp_path / "clone" / "apps" / "b.yaml").read_text() == "b: 2\n"
        assert git.show("apps/b.yaml") == "b: 2\n"
