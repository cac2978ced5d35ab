"""The docs stand on their own: every relative link and path they give resolves inside this
repository. A user has the repository, not the notes it was researched from (e.g. a
``../shared/reference/...`` file): what a guide relies on belongs in the guide.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = sorted([REPO_ROOT / "README.md", *REPO_ROOT.glob("docs/**/*.md")])
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")
# A relative path that climbs: in a link, in backticks or in plain text.
CLIMBING_PATH = re.compile(r"(?<![\w/])((?:\.\./)+[\w.-]+(?:/[\w.-]+)*)")
EXTERNAL = ("http://", "https://", "mailto:", "#")


def _unresolved(document: Path, target: str) -> bool:
    """Whether ``target``, relative to ``document``, leaves the repository or names nothing."""
    resolved = (document.parent / target.split("#", 1)[0]).resolve()
    return not resolved.is_relative_to(REPO_ROOT) or not resolved.exists()


def test_relative_links_resolve_to_files_of_the_repository() -> None:
    broken = []
    for document in DOCUMENTS:
        for target in MARKDOWN_LINK.findall(document.read_text(encoding="utf-8")):
            if target.startswith(EXTERNAL):
                continue
            if _unresolved(document, target):
                broken.append(f"{document.relative_to(REPO_ROOT)}: {target}")
    assert broken == []


def test_no_document_points_out_of_the_repository() -> None:
    outside = [
        f"{document.relative_to(REPO_ROOT)}: {path}"
        for document in DOCUMENTS
        for path in CLIMBING_PATH.findall(document.read_text(encoding="utf-8"))
        if _unresolved(document, path)
    ]
    assert outside == []
    mentions = [
        str(d.relative_to(REPO_ROOT))
        for d in DOCUMENTS
        if "shared/reference" in d.read_text(encoding="utf-8")
    ]
    assert mentions == []
