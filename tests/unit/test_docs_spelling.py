"""One spelling of each host and namespace across the README and every guide and example: a new
user copying from two pages must not end up with two MAS hosts or two Invitation namespaces.

configuration.md is exempt for hosts: its table shows the code's defaults as they are.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = sorted(
    [REPO_ROOT / "README.md", *REPO_ROOT.glob("docs/**/*.md"), *REPO_ROOT.glob("docs/**/*.yaml")]
)
MAS_HOST = "account.example.org"
OTHER_MAS_HOSTS = ("auth.example.org", "mas.example.org")
# ESS's namespace (the operator beside MAS), the Invitations', Flux's, the API server's Service.
NAMESPACES = {"ess", "matrix-invite", "flux-system", "default"}
NAMESPACE = re.compile(r"(?:\bnamespace:\s*|\s-n\s+|--namespace[= ])([a-z0-9][a-z0-9-]*)")


def _relative(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


def test_the_mas_host_has_one_spelling() -> None:
    assert any(MAS_HOST in d.read_text(encoding="utf-8") for d in DOCUMENTS)
    found = [
        f"{_relative(d)}: {host}"
        for d in DOCUMENTS
        if d.name != "configuration.md"
        for host in OTHER_MAS_HOSTS
        if host in d.read_text(encoding="utf-8")
    ]
    assert found == []


def test_namespaces_are_the_guides_namespaces() -> None:
    found = sorted(
        f"{_relative(d)}: {name}"
        for d in DOCUMENTS
        for name in NAMESPACE.findall(d.read_text(encoding="utf-8"))
        if name not in NAMESPACES
    )
    assert found == []
