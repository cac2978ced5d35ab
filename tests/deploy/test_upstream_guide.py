"""docs/install-authentik-only.md says only what holds: every YAML block is a file of
docs/examples/upstream/, and Authentik's fragment, merged with the operator's the way ESS 26.8.1
merges them (lists appended, the chart's listeners last), gives what a real MAS 1.22 ran with
when Authentik was the only way in (mas/FACTS.md): one provider that requires a token, MAS's
own passwords off, no email section; `discovery_mode` only for a plain-http issuer; on MAS 1.18
the global key.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.chart import REPO_ROOT
from tests.deploy.test_ess_guide import (
    EXAMPLES as ESS_EXAMPLES,
)
from tests.deploy.test_ess_guide import (
    assert_nothing_repeated,
    assert_operator_client,
    check_keys,
    load,
    merged_config,
)

GUIDE = REPO_ROOT / "docs" / "install-authentik-only.md"
EXAMPLES = REPO_ROOT / "docs" / "examples" / "upstream"
IMPORT_ACTIONS = {"ignore", "suggest", "force", "require"}


def authentik_values() -> dict[str, Any]:
    (secret,) = load("values-authentik-only.yaml", EXAMPLES)
    values: dict[str, Any] = yaml.safe_load(secret["stringData"]["values.yaml"])
    return values


def test_every_yaml_block_is_an_example_file_and_every_file_is_shown() -> None:
    shown = re.findall(
        r"<!-- file: (docs/examples/upstream/[^ ]+) -->\n```yaml\n(.*?)```", GUIDE.read_text(), re.S
    )
    assert len(shown) == GUIDE.read_text().count("```yaml")
    for path, block in shown:
        assert (REPO_ROOT / path).read_text() == block, path
    assert {Path(p).name for p, _ in shown} == {p.name for p in EXAMPLES.glob("*.yaml")}


def test_authentik_is_the_only_way_in_and_requires_a_token() -> None:
    (operator_secret,) = load("secret-upstream.yaml", ESS_EXAMPLES)
    config = merged_config(authentik_values(), operator_secret)
    assert_nothing_repeated(config)
    assert_operator_client(config, operator_secret)
    (provider,) = config["upstream_oauth2"]["providers"]
    assert provider["human_name"] == "Authentik"
    assert provider["registration_token_required"] is True
    assert provider["issuer"].startswith("https://")
    assert "discovery_mode" not in provider, "only a plain-http issuer needs it"
    for claim in provider["claims_imports"].values():
        assert claim["action"] in IMPORT_ACTIONS
    # Without passwords.enabled: false the merged config keeps password login on.
    assert config["passwords"] == {"enabled": False}
    assert config["account"] == {"password_registration_enabled": False}
    assert "email" not in config, "no code on this path; MAS's default transport is blackhole"
    # The operator's entry is the one install-ess.md adds everywhere.
    (plain,) = load("values.yaml", ESS_EXAMPLES)
    entry = plain["matrixAuthenticationService"]["additional"]["invite-operator"]
    assert authentik_values()["matrixAuthenticationService"]["additional"]["invite-operator"] == (
        entry
    )


def test_the_plain_http_variant_differs_only_by_issuer_and_discovery_mode() -> None:
    (variant,) = load("provider-plain-http.yaml", EXAMPLES)
    check_keys(variant)
    (plain_http,) = variant["upstream_oauth2"]["providers"]
    fragment = yaml.safe_load(
        authentik_values()["matrixAuthenticationService"]["additional"]["authentik"]["config"]
    )
    (https,) = fragment["upstream_oauth2"]["providers"]
    assert plain_http["issuer"].startswith("http://")
    assert plain_http["discovery_mode"] == "insecure"
    differing = {k for k in plain_http.keys() | https.keys() if plain_http.get(k) != https.get(k)}
    assert differing == {"issuer", "discovery_mode", "claims_imports"}
    assert plain_http["id"] == https["id"], "the same provider, not a second one"


def test_mas_1_18_uses_the_global_key_beside_passwords_off() -> None:
    (account,) = load("account-mas-1.18.yaml", EXAMPLES)
    check_keys(account)
    assert account["account"] == {
        "password_registration_enabled": False,
        "registration_token_required": True,
    }
