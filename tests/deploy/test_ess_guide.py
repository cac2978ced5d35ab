"""docs/install-ess.md says only what holds: every YAML block is a file of docs/examples/ess/,
the MAS fragments survive ESS's merge (lists appended) without repeating a listener, a client or
a provider, use only keys MAS knows (../shared/reference/mas/FACTS.md, ess/FACTS.md), and the
operator's values (the HelmRelease of docs/install-flux.md, their only copy) pass the chart's
schema and render what the guide promises, reading the Secret MAS reads.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.chart import REPO_ROOT, by_kind, env_of, one, render
from tests.deploy.test_chart import _merged, schema

GUIDE = REPO_ROOT / "docs" / "install-ess.md"
EXAMPLES = REPO_ROOT / "docs" / "examples" / "ess"
FLUX_EXAMPLES = REPO_ROOT / "docs" / "examples" / "flux"
OPERATOR_CLIENT = "01J44RKQYM4G3TNVANTMTDYTX6"

#: What ESS's renderer merges before and after the fragments: the parts of the chart's own
#: under- and overrides that a fragment could collide with (ESS 26.8.1,
#: configs/matrix-authentication-service/config-{under,over}rides.yaml.tpl). The listeners are
#: overrides, bound by port without an address (the default dual-stack network); the chart sets
#: no `email` at all (the blackhole transport is MAS's own default).
ESS_UNDERRIDES: dict[str, Any] = {
    "policy": {
        "data": {
            "admin_clients": [],
            "admin_users": [],
            "client_registration": {"allow_host_mismatch": False, "allow_insecure_uris": False},
        }
    },
    "experimental": {"session_limit": {"soft_limit": 50, "hard_limit": 50}},
}
ESS_OVERRIDES: dict[str, Any] = {
    "http": {
        "public_base": "https://account.example.org",
        "listeners": [
            {
                "name": "web",
                "binds": [{"port": 8080}],
                "resources": [
                    {"name": n} for n in ("human", "discovery", "oauth", "compat", "assets")
                ]
                + [{"name": "graphql", "undocumented_oauth2_access": True}, {"name": "adminapi"}],
            },
            {
                "name": "internal",
                "binds": [{"port": 8081}],
                "resources": [
                    {"name": "health"},
                    {"name": "prometheus"},
                    {"name": "connection-info"},
                ],
            },
        ],
    },
}
#: The keys a fragment for the operator may set, as MAS 1.22 knows them (mas/FACTS.md: the
#: smallest configuration, the account flags, the email section; upstream_oauth2 providers).
KNOWN_KEYS: dict[str, set[str]] = {
    "": {"clients", "policy", "account", "email", "upstream_oauth2", "passwords"},
    "passwords": {"enabled"},
    "clients[]": {"client_id", "client_auth_method", "client_secret_file", "client_secret"},
    "policy": {"data"},
    "policy.data": {"admin_clients"},
    "account": {
        "password_registration_enabled",
        "password_registration_token_required",
        "registration_token_required",
        "password_registration_email_required",
    },
    "email": {"from", "reply_to", "transport", "mode", "hostname", "port", "username", "password"},
    "upstream_oauth2": {"providers"},
    "upstream_oauth2.providers[]": {
        "id",
        "human_name",
        "issuer",
        "client_id",
        "client_secret",
        "token_endpoint_auth_method",
        "scope",
        "registration_token_required",
        "discovery_mode",
        "claims_imports",
    },
    "upstream_oauth2.providers[].claims_imports": {"localpart", "displayname", "email"},
}
#: Settings the chart owns (ess/FACTS.md): a fragment that sets them fights the chart.
CHART_OWNED = {"http", "database", "matrix", "secrets"}


def load(name: str, examples: Path = EXAMPLES) -> list[Any]:
    return [d for d in yaml.safe_load_all((examples / name).read_text()) if d is not None]


# --- the guide shows the files, byte for byte ---------------------------------------------------


def test_every_yaml_block_of_the_guide_is_an_example_file_and_every_file_is_shown() -> None:
    text = GUIDE.read_text()
    shown = re.findall(r"<!-- file: (docs/examples/ess/[^ ]+) -->\n```yaml\n(.*?)```", text, re.S)
    assert len(shown) == text.count("```yaml"), "a YAML block without its file marker"
    for path, block in shown:
        assert (REPO_ROOT / path).read_text() == block, f"{path} differs from the guide"
    assert {Path(p).name for p, _ in shown} == {p.name for p in EXAMPLES.glob("*.yaml")}


# --- the MAS fragments, merged as ESS merges them ----------------------------------------------


def ess_merge(base: Any, extra: Any) -> Any:
    """ESS's renderer (and MAS's own multi-file loading): maps by key, lists appended."""
    if isinstance(base, dict) and isinstance(extra, dict):
        merged = dict(base)
        for key, value in extra.items():
            merged[key] = ess_merge(base[key], value) if key in base else value
        return merged
    if isinstance(base, list) and isinstance(extra, list):
        return base + extra
    return extra


def fragments(values: dict[str, Any], secret: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The fragments of `matrixAuthenticationService.additional`, inline or from the Secret."""
    found: dict[str, dict[str, Any]] = {}
    for name, entry in values["matrixAuthenticationService"]["additional"].items():
        if "config" in entry:
            text = entry["config"]
        else:
            assert entry["configSecret"] == secret["metadata"]["name"]
            text = secret["stringData"][entry["configSecretKey"]]
        assert not re.search(r"(?<!\\)\$\{", text), (
            f"{name}: an unescaped ${{ breaks ESS's renderer"
        )
        found[name] = yaml.safe_load(text)
    return found


def check_keys(node: Any, where: str = "") -> None:
    if isinstance(node, list):
        for item in node:
            check_keys(item, f"{where}[]")
        return
    if not isinstance(node, dict) or where not in KNOWN_KEYS:
        return
    unknown = set(node) - KNOWN_KEYS[where]
    assert not unknown, f"{where or 'top level'}: MAS knows no {sorted(unknown)}"
    for key, value in node.items():
        check_keys(value, f"{where}.{key}".lstrip("."))


def merged_config(values: dict[str, Any], secret: dict[str, Any]) -> dict[str, Any]:
    """What MAS would read: underrides, fragments in alphabetical order (each one checked),
    overrides."""
    config: dict[str, Any] = ESS_UNDERRIDES
    for name, fragment in sorted(fragments(values, secret).items()):
        assert not CHART_OWNED & set(fragment), f"{name} sets what the chart owns"
        check_keys(fragment)
        config = ess_merge(config, fragment)
    merged: dict[str, Any] = ess_merge(config, ESS_OVERRIDES)
    return merged


def assert_nothing_repeated(config: dict[str, Any]) -> None:
    listeners = [listener["name"] for listener in config["http"]["listeners"]]
    ports = [
        str(b.get("port") or b["address"].rsplit(":", 1)[-1])
        for listener in config["http"]["listeners"]
        for b in listener["binds"]
    ]
    assert len(set(listeners)) == len(listeners), f"listener repeated: {listeners}"
    assert len(set(ports)) == len(ports), "two listeners on one port: MAS exits at start"
    clients = [c["client_id"] for c in config.get("clients", [])]
    assert len(set(clients)) == len(clients), f"client repeated: {clients}"
    providers = [p["id"] for p in config.get("upstream_oauth2", {}).get("providers", [])]
    assert len(set(providers)) == len(providers), f"provider repeated: {providers}"


def assert_operator_client(config: dict[str, Any], secret: dict[str, Any]) -> None:
    (client,) = [c for c in config["clients"] if c["client_id"] == OPERATOR_CLIENT]
    assert "client_secret" not in client, "inline secrets show in mas-cli config dump"
    name, key = secret["metadata"]["name"], "client-secret"
    # ESS mounts the whole configSecret at /secrets/<name>/, every key a file.
    assert client["client_secret_file"] == f"/secrets/{name}/{key}"
    assert key in secret["stringData"]
    assert config["policy"]["data"]["admin_clients"] == [OPERATOR_CLIENT]


def test_the_password_sign_up_fragment_merges_cleanly_and_gates_registration() -> None:
    (values,) = load("values.yaml")
    (secret,) = load("secret-password.yaml")
    config = merged_config(values, secret)
    assert_nothing_repeated(config)
    assert_operator_client(config, secret)
    assert config["account"] == {
        "password_registration_enabled": True,
        "password_registration_token_required": True,  # MAS 1.19+
    }
    # ESS sets no email: without one MAS's 6-digit code goes nowhere and sign-up stalls.
    assert config["email"]["transport"] == "smtp"


def test_the_valuesfrom_secret_with_authentik_keeps_one_provider_that_requires_a_token() -> None:
    (values_secret,) = load("values-from-secret.yaml")
    values = yaml.safe_load(values_secret["stringData"]["values.yaml"])
    (secret,) = load("secret-upstream.yaml")
    config = merged_config(values, secret)
    assert_nothing_repeated(config)
    assert_operator_client(config, secret)
    (provider,) = config["upstream_oauth2"]["providers"]
    assert provider["registration_token_required"] is True
    # Authentik the only way in: MAS's own passwords off, else password login stays on.
    assert config["passwords"] == {"enabled": False}
    assert config["account"] == {"password_registration_enabled": False}
    assert "email" not in config  # no code mails on this path; MAS's default is the blackhole
    # The same additional entry as in the plain values.yaml: one fragment, two places.
    (plain,) = load("values.yaml")
    entry = plain["matrixAuthenticationService"]["additional"]["invite-operator"]
    assert values["matrixAuthenticationService"]["additional"]["invite-operator"] == entry


def test_the_check_catches_a_fragment_that_repeats_the_chart_s_listener() -> None:
    (values,) = load("values.yaml")
    (secret,) = load("secret-password.yaml")
    fragment = yaml.safe_load(secret["stringData"]["mas-fragment.yaml"])
    config = ess_merge(merged_config(values, secret), {"http": ESS_OVERRIDES["http"]})
    with pytest.raises(AssertionError, match="listener repeated"):
        assert_nothing_repeated(config)
    with pytest.raises(AssertionError, match="client repeated"):
        assert_nothing_repeated(ess_merge(config | {"http": ESS_OVERRIDES["http"]}, fragment))
    # A fragment that brings its own listener on 8080 under another name: two binds, one port.
    own = {"http": {"listeners": [{"name": "mine", "binds": [{"address": "[::]:8080"}]}]}}
    with pytest.raises(AssertionError, match="two listeners on one port"):
        assert_nothing_repeated(ess_merge(own, merged_config(values, secret)))
    with pytest.raises(AssertionError, match="MAS knows no"):
        check_keys({"account": {"password_registration_token_requried": True}})


def test_the_account_keys_for_mas_1_18_use_the_old_name() -> None:
    (account,) = load("account-mas-1.18.yaml")
    check_keys(account)
    assert account["account"] == {
        "password_registration_enabled": True,
        "registration_token_required": True,
    }


def test_plain_mas_adds_the_admin_api_to_the_existing_listener() -> None:
    (config,) = load("plain-mas.yaml")
    (listener,) = config["http"]["listeners"]
    assert {"name": "adminapi"} in listener["resources"]
    check_keys({k: v for k, v in config.items() if k != "http"})
    assert config["policy"]["data"]["admin_clients"] == [config["clients"][0]["client_id"]]
    assert config["account"]["password_registration_token_required"] is True


# --- the operator's values and the ingress rule ------------------------------------------------


def test_the_operator_values_pass_the_schema_and_render_the_ess_setup() -> None:
    (release,) = [d for d in load("release.yaml", FLUX_EXAMPLES) if d["kind"] == "HelmRelease"]
    values = release["spec"]["values"]
    (smtp_secret,) = load("secrets.yaml", FLUX_EXAMPLES)
    for shape in ("secret-password.yaml", "secret-upstream.yaml"):
        (secret,) = load(shape)
        # The operator is installed where the one Secret is, so its Pod can mount it.
        assert release["metadata"]["namespace"] == secret["metadata"]["namespace"]
        assert values["mas"]["clientSecret"] == {
            "existingSecret": secret["metadata"]["name"],
            "key": "client-secret",
        }
    assert smtp_secret["metadata"]["namespace"] == release["metadata"]["namespace"]
    assert values["smtp"]["password"] == {
        "existingSecret": smtp_secret["metadata"]["name"],
        "key": next(iter(smtp_secret["stringData"])),
    }
    jsonschema.validate(_merged(values), schema(), cls=jsonschema.Draft7Validator)
    objects = render(values, namespace=release["metadata"]["namespace"])
    env = env_of(objects)
    assert env["MATRIX_INVITE_MAS_URL"].endswith(".svc.cluster.local:8080")
    assert env["MATRIX_INVITE_MAS_TOKEN_ENDPOINT"].endswith(":8080/oauth2/token")
    for from_mas in ("SERVER_NAME", "MAS_SIGN_UP", "MAS_UPSTREAM_PROVIDER_NAME"):
        assert f"MATRIX_INVITE_{from_mas}" not in env
    assert env["MATRIX_INVITE_ELEMENT_WEB_URL"] == "https://chat.example.org"
    assert not by_kind(objects, "ServiceMonitor"), "needs CRDs k3s often lacks"
    policy = one(objects, "NetworkPolicy")["spec"]
    assert {"port": 8080, "protocol": "TCP"} in [
        p for rule in policy["egress"] for p in rule.get("ports", [])
    ]
    # MAS is in the policy's own namespace: a bare podSelector selects there.
    (mas_peer,) = values["networkPolicy"]["mas"]["to"]
    assert set(mas_peer) == {"podSelector"}
    assert env["MATRIX_INVITE_REGISTRATION_URL"] == "https://account.example.org/register"


def test_the_ingress_rule_closes_only_the_admin_api() -> None:
    service, ingress = load("admin-api-off-the-ingress.yaml")
    assert "selector" not in service["spec"], "no endpoints: the controller answers 503"
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert (path["path"], path["pathType"]) == ("/api/admin", "Prefix")
    assert path["backend"]["service"]["name"] == service["metadata"]["name"]
    assert ingress["metadata"]["namespace"] == service["metadata"]["namespace"]
