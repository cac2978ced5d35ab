"""A failing GitOps test shows in its report why Flux is stuck.

- The hook: a failed test carries the sections of what it registered (here a Git server's
  request log), a passing one carries none. Checked on an inner pytest run.
- The content: with a GitRepository whose URL names no repository, the sections hold its status
  (Flux's own failure message), source-controller's log about that object and the Git server's
  404 for the fetch: what CI's log needs to tell a Git problem from a Flux one.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from tests.controlplane.cluster import ControlPlane
from tests.gitops import failure_report
from tests.gitops.failure_report import Watched, sections
from tests.gitops.flux import FLUX_API_VERSION, GIT_REPOSITORIES, FluxApi, FluxControllers
from tests.gitops.git_server import BRANCH, REPOSITORY, GitServer
from tests.integration.harness import wait_until

INNER_TESTS = """
import urllib.error
import urllib.request

from tests.gitops.failure_report import watch
from tests.gitops.git_server import GitServer


def _fetch(git, path):
    url = git.url.replace("/repo.git", path)
    try:
        urllib.request.urlopen(url, timeout=10).close()
    except urllib.error.HTTPError:
        pass


def test_fails(request, tmp_path):
    with GitServer(tmp_path / "git") as git:
        watch(request.node).git = git
        _fetch(git, "/missing.git/info/refs?service=git-upload-pack")
    assert False, "failing on purpose"


def test_passes(request, tmp_path):
    with GitServer(tmp_path / "git") as git:
        watch(request.node).git = git
        _fetch(git, "/passing.git/info/refs?service=git-upload-pack")
"""


def test_a_failed_test_reports_the_git_server_log_and_a_passing_one_does_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(INNER_TESTS))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    plugins_off = ["-p", "no:cacheprovider", "-p", "no:xdist", "-p", "no:asyncio"]
    options = [*plugins_off, "-q", "--rootdir", str(tmp_path)]
    exit_code = pytest.main([*options, str(tmp_path)], plugins=[failure_report])
    out = capsys.readouterr().out
    assert exit_code == pytest.ExitCode.TESTS_FAILED, out
    assert "1 failed, 1 passed" in out
    assert out.count("Git server: requests served") == 1
    assert '"GET /missing.git/info/refs?service=git-upload-pack HTTP/1.1" 404' in out
    assert "/passing.git" not in out


@pytest.mark.integration
def test_a_broken_source_shows_in_the_report_from_flux_and_from_git(
    control_plane: ControlPlane, flux: FluxControllers, namespace: str, tmp_path: Path
) -> None:
    api = FluxApi(control_plane, namespace)
    with GitServer(tmp_path / "git") as git:
        git.commit({"app/a.yaml": "a: 1\n"}, "one file")
        wrong_url = git.url.replace(f"/{REPOSITORY}", "/no-such-repo.git")
        control_plane.kubectl(
            "apply",
            "-f",
            "-",
            input=yaml.safe_dump(
                {
                    "apiVersion": f"source.toolkit.fluxcd.io/{FLUX_API_VERSION}",
                    "kind": "GitRepository",
                    "metadata": {"name": "broken", "namespace": namespace},
                    "spec": {"url": wrong_url, "interval": "1m", "ref": {"branch": BRANCH}},
                }
            ),
        )

        def failed() -> bool:
            body = api.get(GIT_REPOSITORIES, "broken")
            conditions = (body.get("status") or {}).get("conditions", [])
            return any(c["type"] == "Ready" and c["status"] == "False" for c in conditions)

        wait_until("the GitRepository reports its failure", failed, 60)
    report = dict(sections(Watched(flux=flux, git=git, api=api)))

    statuses = report[f"Flux objects' status in {namespace}"]
    assert '"GitRepository broken"' in statuses
    assert "no-such-repo.git" in statuses  # Flux names the URL it could not fetch
    (source_log,) = [
        text for title, text in report.items() if title.startswith("source-controller")
    ]
    assert "running, pid" in next(t for t in report if t.startswith("source-controller"))
    assert f'"namespace":"{namespace}"' in source_log
    assert (
        '"GET /no-such-repo.git/info/refs?service=git-upload-pack HTTP/1.1" 404'
        in (report["Git server: requests served"])
    )
