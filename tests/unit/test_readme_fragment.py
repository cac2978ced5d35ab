"""The README's MAS fragment reads the client secret from where ESS mounts it: the Secret of
docs/install-ess.md step 1 at ``/secrets/<Secret name>/<key>`` (ESS mounts a fragment's Secret
there in MAS and its init containers, every key a file)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
ESS_SECRET = REPO_ROOT / "docs" / "examples" / "ess" / "secret-password.yaml"


def test_readme_fragment_names_the_file_ess_mounts() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", readme, re.DOTALL)]
    [fragment] = [b for b in blocks if isinstance(b, dict) and "clients" in b]
    secret = yaml.safe_load(ESS_SECRET.read_text(encoding="utf-8"))
    ess_fragment = yaml.safe_load(secret["stringData"]["mas-fragment.yaml"])
    mounted = f"/secrets/{secret['metadata']['name']}/client-secret"
    assert "client-secret" in secret["stringData"]
    assert ess_fragment["clients"][0]["client_secret_file"] == mounted
    assert fragment["clients"][0]["client_secret_file"] == mounted
