"""docs/install-flux.md shows exactly the files the GitOps tests apply and commit.

Each YAML block an admin copies follows a ``<!-- file: docs/examples/flux/<name> -->`` marker and
is byte-identical to that file; the tests in this folder read those files and change only the
fields :data:`~tests.gitops.repository.TEST_OVERRIDES` lists. No cluster needed.
"""

from __future__ import annotations

import re

import pytest

from tests.gitops.repository import (
    EXAMPLES,
    INVITATIONS_DIR,
    OPERATOR_DIR,
    TEST_OVERRIDES,
    changed_fields,
    for_test,
    guide_documents,
)
from tests.operator_process import REPO_ROOT

GUIDE = REPO_ROOT / "docs" / "install-flux.md"
MARKED_BLOCK = re.compile(
    r"<!-- file: (docs/examples/flux/[^ ]+) -->\n```yaml\n(.*?)```", re.DOTALL
)
BOOTSTRAP_PATH = "clusters/home"


def shown_files() -> dict[str, str]:
    return dict(MARKED_BLOCK.findall(GUIDE.read_text(encoding="utf-8")))


def test_every_example_file_is_shown_verbatim_in_the_guide() -> None:
    shown = shown_files()
    files = {f"docs/examples/flux/{p.name}" for p in EXAMPLES.glob("*.yaml")}
    assert set(shown) == files
    for name, block in shown.items():
        assert block == (REPO_ROOT / name).read_text(encoding="utf-8"), name
    # No YAML block in the guide escapes the marker convention.
    assert GUIDE.read_text(encoding="utf-8").count("```yaml") == len(shown)


@pytest.mark.parametrize("name", ["kustomizations.yaml", "gitrepository.yaml"])
def test_tests_change_only_the_declared_fields_of_the_guides_objects(name: str) -> None:
    for document in guide_documents(name):
        applied = for_test(document, "test-ns", git_url="http://127.0.0.1:1/repo.git")
        assert changed_fields(document, applied) <= set(TEST_OVERRIDES)


def test_the_kustomizations_folders_are_outside_the_bootstrap_path() -> None:
    kustomizations = {
        d["metadata"]["name"]: d["spec"] for d in guide_documents("kustomizations.yaml")
    }
    assert kustomizations["matrix-invite-operator"]["path"] == f"./{OPERATOR_DIR}"
    assert kustomizations["invitations"]["path"] == f"./{INVITATIONS_DIR}"
    assert kustomizations["invitations"]["dependsOn"] == [{"name": "matrix-invite-operator"}]
    # The operator waits for the admin's ESS Kustomization, which applies the Secret it reads.
    assert kustomizations["matrix-invite-operator"]["dependsOn"] == [{"name": "ess"}]
    for spec in kustomizations.values():
        assert not spec["path"].removeprefix("./").startswith(BOOTSTRAP_PATH)
    assert f"--path={BOOTSTRAP_PATH}" in GUIDE.read_text(encoding="utf-8")
