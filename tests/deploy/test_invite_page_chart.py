"""The chart's invite page: off by default; when on, a Deployment, Service and optional Ingress
of `serve-invite-page` that mount no Secret, get no service account token and match no selector
of the operator's; the operator's mail learns the page's URL. helm is the real one."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from matrix_invite_operator.invite_page import build_invite_page
from matrix_invite_operator.settings import Settings

from tests.deploy.chart import REPO_ROOT, HelmError, Manifest, by_kind, env_of, lint, render
from tests.deploy.test_chart import CONFIGURED

PAGE: dict[str, Any] = {
    **CONFIGURED,
    "invitations": {"serverName": "example.org", "elementWebUrl": "https://chat.example.org"},
    "invitePage": {
        "enabled": True,
        "url": "https://invite.example.org",
        "emailCode": False,
        "ingress": {
            "enabled": True,
            "className": "traefik",
            "tlsSecretName": "invite-tls",
            "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"},
        },
    },
}


def page_objects(objects: list[Manifest]) -> list[Manifest]:
    return [
        o
        for o in objects
        if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "invite-page"
    ]


def page_deployment(objects: list[Manifest]) -> Manifest:
    (deployment,) = [o for o in page_objects(objects) if o["kind"] == "Deployment"]
    return deployment


def operator_deployment(objects: list[Manifest]) -> Manifest:
    (deployment,) = [o for o in by_kind(objects, "Deployment") if o not in page_objects(objects)]
    return deployment


def operator_env(objects: list[Manifest]) -> dict[str, Any]:
    (container,) = operator_deployment(objects)["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_the_page_is_off_by_default() -> None:
    objects = render()
    assert page_objects(objects) == []
    assert "MATRIX_INVITE_INVITE_PAGE_URL" not in env_of(objects)


def test_lint_passes_with_the_page() -> None:
    lint(PAGE)


def test_the_page_deployment_holds_no_secret_and_no_service_account_token() -> None:
    objects = render(PAGE)
    deployment = page_deployment(objects)
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["args"] == ["serve-invite-page"]
    assert spec["automountServiceAccountToken"] is False
    assert "volumes" not in spec
    assert "volumeMounts" not in container
    assert "envFrom" not in container
    text = json.dumps(deployment).lower()
    assert "secret" not in text  # no secretKeyRef, no Secret volume, no ..._FILE credential
    assert all("value" in e for e in container["env"])  # plain values only
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}


def test_what_the_page_pod_starts_with_renders_the_page() -> None:
    (container,) = page_deployment(render(PAGE))["spec"]["template"]["spec"]["containers"]
    env = {e["name"].removeprefix("MATRIX_INVITE_").lower(): e["value"] for e in container["env"]}
    assert set(env) <= set(Settings.model_fields)
    settings = Settings.model_validate(env)
    assert settings.invite_page_email_code is False
    page = build_invite_page(settings)
    english = page.pages["en"].decode()
    assert "You are invited to example.org" in english
    assert "https://chat.example.org" in english
    assert "6-digit" not in english  # emailCode: false reaches the steps


def test_the_operator_links_to_the_page_but_stays_unreachable() -> None:
    objects = render(PAGE)
    assert operator_env(objects)["MATRIX_INVITE_INVITE_PAGE_URL"] == "https://invite.example.org"
    operator_labels = operator_deployment(objects)["spec"]["template"]["metadata"]["labels"]
    page_labels = page_deployment(objects)["spec"]["template"]["metadata"]["labels"]
    for service in by_kind(objects, "Service"):
        selector = service["spec"]["selector"].items()
        matches_page = selector <= page_labels.items()
        matches_operator = selector <= operator_labels.items()
        assert matches_page != matches_operator, service["metadata"]["name"]
    (ingress,) = by_kind(objects, "Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    (page_service,) = [s for s in page_objects(objects) if s["kind"] == "Service"]
    assert backend == {"name": page_service["metadata"]["name"], "port": {"name": "http"}}


def test_the_ingress_serves_the_pages_host_with_tls() -> None:
    (ingress,) = by_kind(render(PAGE), "Ingress")
    assert ingress["spec"]["ingressClassName"] == "traefik"
    assert ingress["spec"]["rules"][0]["host"] == "invite.example.org"
    assert ingress["spec"]["tls"] == [{"hosts": ["invite.example.org"], "secretName": "invite-tls"}]
    without = {**PAGE, "invitePage": {**PAGE["invitePage"], "ingress": {"enabled": False}}}
    assert by_kind(render(without), "Ingress") == []


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"invitePage": {"enabled": True}}, "url"),
        ({"invitePage": {"enabled": True, "url": "https://invite.example.org"}}, "serverName"),
        (
            {"invitePage": {"enabled": True, "url": "https://invite.example.org/#x"}},
            "does not match",
        ),
    ],
    ids=["no-url", "no-server-name", "url-with-fragment"],
)
def test_the_chart_refuses_a_page_that_cannot_work(values: dict[str, Any], message: str) -> None:
    with pytest.raises(HelmError, match=message):
        render(values)


def test_the_guides_values_render_a_working_page() -> None:
    values = yaml.safe_load((REPO_ROOT / "docs/examples/invite-page/values.yaml").read_text())
    guide = (REPO_ROOT / "docs/invite-page.md").read_text(encoding="utf-8")
    marker = "<!-- file: docs/examples/invite-page/values.yaml -->\n```yaml\n"
    shown = guide.split(marker, 1)[1].split("```", 1)[0]
    assert shown == (REPO_ROOT / "docs/examples/invite-page/values.yaml").read_text()
    objects = render(values)
    assert len(page_objects(objects)) == 3  # Deployment, Service, Ingress
    assert operator_env(objects)["MATRIX_INVITE_INVITE_PAGE_URL"] == "https://invite.example.org"
