"""The chart as tests see it: helm (built from the Go module proxy) rendering and linting it.

`render()` runs `helm template` with values given as a mapping (written to a file, never as
`--set` strings, so lists and nested objects arrive as typed) and returns the parsed objects.
"""

from __future__ import annotations

import functools
import json
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.controlplane.build import ensure_helm

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "charts" / "matrix-invite-operator"
CRD_FILE = REPO_ROOT / "crds" / "invitations.matrix-invite.dev.yaml"
CHART_CRD_FILE = CHART_DIR / "files" / "crds" / CRD_FILE.name
# The version of the test API server: rendering for it is what gets installed there.
KUBE_VERSION = "1.34.0"
HELM_TIMEOUT_SECONDS = 120.0

Manifest = dict[str, Any]


class HelmError(subprocess.CalledProcessError):
    """helm exited non-zero; `str()` shows its output."""

    def __str__(self) -> str:
        return f"{' '.join(map(str, self.cmd))!r} exited {self.returncode}\n{self.stderr}"


def helm(
    *args: str, kubeconfig: Path | None = None, check: bool = True, timeout: float | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the built helm with a private, empty home (no repositories, no plugins, no cache)."""
    with tempfile.TemporaryDirectory(prefix="helm-home-") as home:
        env = {
            "HOME": home,
            "HELM_CACHE_HOME": f"{home}/cache",
            "HELM_CONFIG_HOME": f"{home}/config",
            "HELM_DATA_HOME": f"{home}/data",
            "PATH": "/usr/bin:/bin",
        }
        if kubeconfig is not None:
            env["KUBECONFIG"] = str(kubeconfig)
        cmd = [str(ensure_helm()), *args]
        result = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout or HELM_TIMEOUT_SECONDS,
            check=False,
        )
    if check and result.returncode != 0:
        raise HelmError(result.returncode, cmd, result.stdout, result.stderr)
    return result


def values_file(values: Mapping[str, Any], directory: Path) -> Path:
    path = directory / "values.json"  # JSON is YAML
    path.write_text(json.dumps(values), encoding="utf-8")
    return path


def template_args(
    values: Mapping[str, Any],
    directory: Path,
    *,
    release: str = "matrix-invite-operator",
    namespace: str = "matrix-invite",
    show_only: Sequence[str] = (),
) -> list[str]:
    args = [
        "template",
        release,
        str(CHART_DIR),
        "--namespace",
        namespace,
        "--kube-version",
        KUBE_VERSION,
        "--values",
        str(values_file(values, directory)),
    ]
    for template in show_only:
        args += ["--show-only", template]
    return args


def render_text(
    values: Mapping[str, Any] | None = None,
    *,
    release: str = "matrix-invite-operator",
    namespace: str = "matrix-invite",
    show_only: Sequence[str] = (),
) -> str:
    """`helm template`'s output. The chart does not change during a run, so the same values,
    release, namespace and templates render once per process (a helm process costs a good part
    of a CPU second); a failing render is never cached."""
    return _render_once(json.dumps(values or {}, sort_keys=True), release, namespace, (*show_only,))


@functools.cache
def _render_once(values_json: str, release: str, namespace: str, show_only: tuple[str, ...]) -> str:
    with tempfile.TemporaryDirectory(prefix="chart-values-") as tmp:
        args = template_args(
            json.loads(values_json),
            Path(tmp),
            release=release,
            namespace=namespace,
            show_only=show_only,
        )
        return helm(*args).stdout


def render(
    values: Mapping[str, Any] | None = None,
    *,
    release: str = "matrix-invite-operator",
    namespace: str = "matrix-invite",
    show_only: Sequence[str] = (),
) -> list[Manifest]:
    """`helm template` for these values, as parsed objects in output order."""
    text = render_text(values, release=release, namespace=namespace, show_only=show_only)
    return parse(text)


def parse(text: str) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def lint(values: Mapping[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="chart-values-") as tmp:
        return helm(
            "lint",
            str(CHART_DIR),
            "--strict",
            "--kube-version",
            KUBE_VERSION,
            "--values",
            str(values_file(values or {}, Path(tmp))),
            check=False,
        )


def by_kind(objects: Iterable[Manifest], kind: str) -> list[Manifest]:
    return [o for o in objects if o.get("kind") == kind]


def one(objects: Iterable[Manifest], kind: str) -> Manifest:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def key(manifest: Manifest) -> tuple[str, str, str]:
    meta = manifest.get("metadata") or {}
    return (manifest["kind"], meta.get("namespace", ""), meta["name"])


def pod_template(objects: Iterable[Manifest]) -> Manifest:
    template: Manifest = one(objects, "Deployment")["spec"]["template"]
    return template


def env_of(objects: Iterable[Manifest]) -> dict[str, Any]:
    """The operator container's env: name -> value (or the valueFrom mapping)."""
    (container,) = pod_template(objects)["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
