"""The GitOps repository of docs/install-flux.md, on the local Git server, as the tests use it.

Owns two things:

- reading the guide's objects from ``docs/examples/flux/`` (the files the guide shows) and the
  few changes a test makes to them (:data:`TEST_OVERRIDES`): a test namespace instead of
  ``flux-system`` and ``matrix-invite``, short intervals and timeouts, the local Git URL.
  Everything else (paths, ``prune``, ``wait``, ``dependsOn``, ``decryption``, ``healthCheckExprs``)
  is applied exactly as the guide says;
- committing to the repository as an admin does: Invitations, the operator's SMTP Secret and
  ESS's Secret of docs/install-ess.md (the one MAS and the operator read the client secret from)
  go through ``sops --encrypt`` with the guide's ``.sops.yaml`` before the commit, so what
  reaches Git (and Flux) is what a real repository would hold.
"""

from __future__ import annotations

import copy
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.gitops.git_server import GitServer
from tests.operator_process import REPO_ROOT

Body = dict[str, Any]
EXAMPLES = REPO_ROOT / "docs" / "examples" / "flux"
ESS_EXAMPLES = REPO_ROOT / "docs" / "examples" / "ess"
OPERATOR_DIR = "matrix-invite/operator"
INVITATIONS_DIR = "matrix-invite/invitations"
# The admin's ESS folder of the guide's layout; its Kustomization is the admin's, not the guide's.
ESS_DIR = "ess"
ESS_SECRET = "ess-invite-operator"
RECIPIENT_PLACEHOLDER = "age1yourpublickey..."
SOPS_TIMEOUT_SECONDS = 30

# Kustomization interval and timeout in tests: a commit is picked up by `reconcile_now`, the
# interval only re-runs health checks after a failure; the guide's 5 m timeout would make a
# failing health check take 5 minutes to show. 30 s is the shortest timeout kustomize-controller
# applies (Kustomization.GetTimeout raises anything shorter to 30 s). After a failed attempt (MAS
# down, a bad commit) the guide's retryInterval is what the test then waits for: 2 s here.
TEST_INTERVAL = "5s"
TEST_RETRY_INTERVAL = "2s"
TEST_TIMEOUT = "30s"
TEST_OVERRIDES = (
    "metadata.namespace",
    "spec.targetNamespace",
    "spec.interval",
    "spec.retryInterval",
    "spec.timeout",
    "spec.url",
)


def guide_documents(name: str) -> list[Body]:
    """The objects of ``docs/examples/flux/<name>``, as the guide shows them."""
    text = (EXAMPLES / name).read_text(encoding="utf-8")
    return [doc for doc in yaml.safe_load_all(text) if doc]


def for_test(document: Body, namespace: str, *, git_url: str | None = None) -> Body:
    """A guide object with only :data:`TEST_OVERRIDES` changed."""
    body = copy.deepcopy(document)
    body["metadata"]["namespace"] = namespace
    spec = body["spec"]
    if body["kind"] == "Kustomization":
        # The operator's Secrets name the guide's namespace; in a test they land in its own.
        spec["targetNamespace"] = namespace
        spec["interval"] = TEST_INTERVAL
        if "retryInterval" in spec:
            spec["retryInterval"] = TEST_RETRY_INTERVAL
        spec["timeout"] = TEST_TIMEOUT
    elif body["kind"] == "GitRepository":
        spec["interval"] = TEST_INTERVAL
        if git_url is not None:
            spec["url"] = git_url
    return body


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat |= _flatten(value, f"{prefix}.{key}" if prefix else key)
        return flat
    return {prefix: node}


def changed_fields(guide: Body, applied: Body) -> set[str]:
    """Dotted paths where two objects differ (a leaf added, removed or changed)."""
    before, after = _flatten(guide), _flatten(applied)
    return {key for key in before.keys() | after.keys() if before.get(key) != after.get(key)}


class AgeKey:
    """An age key pair made with the built ``age-keygen``."""

    def __init__(self, age_keygen: Path, path: Path) -> None:
        subprocess.run(
            [str(age_keygen), "-o", str(path)], check=True, capture_output=True, timeout=30
        )
        self.path = path
        self.private = path.read_text(encoding="utf-8")
        (self.recipient,) = [
            line.split(":", 1)[1].strip()
            for line in self.private.splitlines()
            if line.startswith("# public key:")
        ]


class GitOpsRepository:
    """The guide's repository layout on a :class:`GitServer`, with SOPS on every commit."""

    def __init__(self, git: GitServer, sops: Path, key: AgeKey) -> None:
        self.git = git
        self.sops = sops
        self.key = key

    def sops_config(self) -> str:
        text = (EXAMPLES / "sops.yaml").read_text(encoding="utf-8")
        assert RECIPIENT_PLACEHOLDER in text
        return text.replace(RECIPIENT_PLACEHOLDER, self.key.recipient)

    def commit(self, files: dict[str, str | None], message: str) -> str:
        """Write the files (None removes one), encrypt what ``.sops.yaml`` covers, commit;
        return the commit id."""
        for relative, text in files.items():
            if text is None:
                continue
            path = self.git.clone / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            if relative.startswith(("matrix-invite/", f"{ESS_DIR}/")) and relative.endswith(
                ".yaml"
            ):
                self._encrypt(relative)
        # Removals go through GitServer.commit, which also stages what was written above.
        return self.git.commit({p: None for p, text in files.items() if text is None}, message)

    def _encrypt(self, relative: str) -> None:
        # Relative path and the clone as working directory: sops finds .sops.yaml there and
        # matches its path_regex rules as a user's `sops --encrypt --in-place` would.
        result = subprocess.run(
            [str(self.sops), "--encrypt", "--in-place", relative],
            cwd=self.git.clone,
            env={**os.environ, "SOPS_AGE_KEY_FILE": os.devnull},
            capture_output=True,
            text=True,
            timeout=SOPS_TIMEOUT_SECONDS,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"sops --encrypt {relative} failed: {result.stderr.strip()}")

    def invitation(self, name: str, **spec: Any) -> tuple[str, str]:
        """(path in Git, manifest) of an Invitation in the guide's Invitations folder."""
        body = {
            "apiVersion": "matrix-invite.dev/v1alpha1",
            "kind": "Invitation",
            "metadata": {"name": name},
            "spec": spec,
        }
        return f"{INVITATIONS_DIR}/{name}.yaml", yaml.safe_dump(body, sort_keys=False)

    def operator_secrets(self, smtp_password: str) -> tuple[str, str]:
        """(path in Git, manifest) of the guide's secrets.yaml with the SMTP password filled in."""
        (document,) = guide_documents("secrets.yaml")
        assert document["stringData"].keys() == {"password"}
        document["stringData"] = {"password": smtp_password}
        return f"{OPERATOR_DIR}/secrets.yaml", yaml.safe_dump(document, sort_keys=False)

    def ess_secret(self, mas_client_secret: str) -> tuple[str, str]:
        """(path in Git, manifest) of docs/install-ess.md's Secret (password sign-up) with the
        client secret filled in, where the guide's layout puts it. Its MAS fragment stays as
        shown: no MAS reads it here."""
        text = (ESS_EXAMPLES / "secret-password.yaml").read_text(encoding="utf-8")
        (document,) = [doc for doc in yaml.safe_load_all(text) if doc]
        assert document["metadata"]["name"] == ESS_SECRET
        assert "client-secret" in document["stringData"]
        document["stringData"]["client-secret"] = mas_client_secret
        return f"{ESS_DIR}/{ESS_SECRET}.yaml", yaml.safe_dump(document, sort_keys=False)
