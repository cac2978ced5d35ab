"""docs/authentik.md's files, read as a user applies them: the blueprint builds a flow the
operator can use (an enrollment flow whose first stage is a strict Invitation stage, prompts whose
keys are the ones the operator fills), the chart values render the settings and mounts the
operator reads, and the token's Secret is one the guide's .sops.yaml encrypts."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from matrix_invite_operator.settings import Settings

from tests.deploy.chart import env_of, pod_template, render
from tests.deploy.test_chart import NETWORK_POLICY_VALUES
from tests.doubles.authentik import OPERATOR_PERMISSIONS

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "docs" / "examples" / "authentik"
GUIDE = REPO / "docs" / "authentik.md"


class _BlueprintLoader(yaml.SafeLoader):
    """YAML with authentik's `!KeyOf <id>` tag (read as ("KeyOf", id))."""


def _key_of(loader: yaml.SafeLoader, node: yaml.Node) -> tuple[str, str]:
    assert isinstance(node, yaml.ScalarNode)
    return ("KeyOf", str(loader.construct_scalar(node)))


_BlueprintLoader.add_constructor("!KeyOf", _key_of)


def blueprint() -> dict[str, Any]:
    text = (EXAMPLES / "blueprint-matrix-invitation.yaml").read_text(encoding="utf-8")
    document: dict[str, Any] = yaml.load(text, Loader=_BlueprintLoader)  # noqa: S506 - SafeLoader
    return document


def _entries(model: str) -> list[dict[str, Any]]:
    return [e for e in blueprint()["entries"] if e["model"] == model]


def test_the_blueprint_builds_a_strict_invitation_enrollment_flow() -> None:
    document = blueprint()
    assert document["version"] == 1
    ids = {e["id"] for e in document["entries"] if "id" in e}
    (flow,) = _entries("authentik_flows.flow")
    assert flow["identifiers"]["slug"] == "matrix-invitation"
    assert flow["attrs"]["designation"] == "enrollment"
    (stage,) = _entries("authentik_stages_invitation.invitationstage")
    assert stage["attrs"]["continue_flow_without_invitation"] is False
    bindings = sorted(
        _entries("authentik_flows.flowstagebinding"), key=lambda b: b["identifiers"]["order"]
    )
    assert bindings[0]["identifiers"]["stage"] == ("KeyOf", stage["id"])
    assert bindings[0]["attrs"]["evaluate_on_plan"] is True
    assert all(b["identifiers"]["target"] == ("KeyOf", flow["id"]) for b in bindings)
    referenced = {
        ref
        for entry in document["entries"]
        for ref in re.findall(r"\('KeyOf', '([^']+)'\)", repr(entry))
    }
    assert referenced <= ids, f"!KeyOf to unknown ids: {referenced - ids}"
    kinds = [b["identifiers"]["stage"][1] for b in bindings]
    models = {e["id"]: e["model"] for e in document["entries"] if "id" in e}
    assert [models[k].rsplit(".", 1)[1] for k in kinds] == [
        "invitationstage",
        "promptstage",
        "promptstage",
        "userwritestage",
        "userloginstage",
    ]


def test_the_blueprints_prompts_take_what_the_operator_fixes() -> None:
    """The operator's fixed_data keys (`email`, `name`) are prompt field keys, so both are
    prefilled (authentik maps by exact field_key)."""
    keys = {p["attrs"]["field_key"] for p in _entries("authentik_stages_prompt.prompt")}
    assert {"email", "name", "username", "password", "password_repeat"} <= keys


def test_the_role_grants_what_the_operator_and_doctor_need() -> None:
    granted = json.loads((EXAMPLES / "role-permissions.json").read_text())["permissions"]
    assert set(granted) == set(OPERATOR_PERMISSIONS)  # the double's role, the tests' baseline
    assert "authentik_stages_invitation.change_invitation" not in granted  # least privilege


def test_the_chart_values_give_the_operator_its_settings() -> None:
    values = yaml.safe_load((EXAMPLES / "values-authentik.yaml").read_text(encoding="utf-8"))
    # With the network policy on, as the guide's other values (test_chart's) turn it on.
    policy_values = {**NETWORK_POLICY_VALUES["networkPolicy"], **values["networkPolicy"]}
    objects = render({**values, "networkPolicy": policy_values})
    env = env_of(objects)
    assert env["MATRIX_INVITE_AUTHENTIK_URL"] == "https://id.example.org"
    assert (
        env["MATRIX_INVITE_AUTHENTIK_FLOW_SLUG"] == blueprint()["entries"][0]["identifiers"]["slug"]
    )
    token_file = Path(env["MATRIX_INVITE_AUTHENTIK_API_TOKEN_FILE"])
    spec = pod_template(objects)["spec"]
    (container,) = spec["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["authentik-api-token"] == str(token_file.parent)
    (volume,) = [v for v in spec["volumes"] if v["name"] == "authentik-api-token"]
    assert volume["secret"]["secretName"] == "matrix-invite-operator-authentik"
    assert volume["secret"]["items"] == [{"key": "token", "path": token_file.name}]
    settings = Settings.model_validate(
        {k.removeprefix("MATRIX_INVITE_").lower(): v for k, v in env.items() if "AUTHENTIK" in k}
    )
    assert settings.authentik_enabled
    (policy,) = [o for o in objects if o["kind"] == "NetworkPolicy"]
    ports = [p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]]
    assert 9000 in ports


def test_without_authentik_values_nothing_of_it_renders() -> None:
    env = env_of(render({}))
    assert not [name for name in env if "AUTHENTIK" in name]


def test_the_token_secret_is_one_the_guides_sops_rule_encrypts() -> None:
    text = (EXAMPLES / "api-token-secret.yaml").read_text(encoding="utf-8")
    path = text.splitlines()[0].removeprefix("# ").split()[0]
    secret = yaml.safe_load(text)
    rules = yaml.safe_load((REPO / "docs" / "examples" / "flux" / "sops.yaml").read_text())
    rule = next(r for r in rules["creation_rules"] if re.search(r["path_regex"], path))
    assert re.search(rule["encrypted_regex"], "stringData")
    assert secret["metadata"]["name"] == "matrix-invite-operator-authentik"
    assert set(secret["stringData"]) == {"token"}


def test_the_guide_shows_each_file_it_names() -> None:
    guide = GUIDE.read_text(encoding="utf-8")
    for example in EXAMPLES.iterdir():
        assert f"examples/authentik/{example.name}" in guide, example.name
