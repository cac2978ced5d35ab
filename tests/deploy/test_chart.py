"""The chart renders and lints for every mode, says exactly what it should, and its schema refuses
bad values. helm is the real one, built from the Go module proxy; nothing here needs a cluster."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import pytest
import yaml
from matrix_invite_operator.settings import Settings

from tests.deploy.chart import (
    CHART_CRD_FILE,
    CHART_DIR,
    CRD_FILE,
    HelmError,
    Manifest,
    by_kind,
    env_of,
    key,
    lint,
    one,
    pod_template,
    render,
    render_text,
)

NETWORK_POLICY_VALUES: dict[str, Any] = {
    "networkPolicy": {
        "enabled": True,
        "apiServer": {"to": [{"ipBlock": {"cidr": "172.18.0.2/32"}}]},
        "mas": {
            "to": [
                {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ess"}},
                    "podSelector": {
                        "matchLabels": {"app.kubernetes.io/name": "matrix-authentication-service"}
                    },
                }
            ]
        },
        "smtp": {"to": [{"ipBlock": {"cidr": "192.0.2.25/32"}}]},
        "metricsFrom": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ],
    }
}
CONFIGURED: dict[str, Any] = {
    "mas": {
        "url": "http://ess-matrix-authentication-service.ess.svc.cluster.local:8080",
        "clientId": "01J44RKQYM4G3TNVANTMTDYTX6",
        "clientSecret": {"existingSecret": "invite-mas", "key": "secret"},
        "caBundle": {"configMap": "internal-ca", "key": "ca.pem"},
    },
    "smtp": {
        "host": "smtp.example.org",
        "username": "invitations@example.org",
        "password": {"existingSecret": "invite-smtp", "key": "password"},
    },
}
SYNAPSE: dict[str, Any] = {
    "backend": "synapse",
    "synapse": {
        "url": "http://synapse.matrix.svc:8008",
        "adminToken": {"existingSecret": "invite-synapse", "key": "access-token"},
        "caBundle": {"configMap": "internal-ca", "key": "ca.pem"},
    },
}
MAS_UPSTREAM: dict[str, Any] = {
    "mas": {"signUp": "upstream", "upstreamProviderName": 'Corp <SSO> "Login"'},
}
ONBOARDING: dict[str, Any] = {
    "onboarding": {
        "homeserverUrl": "http://ess-synapse-main.ess.svc:8008",
        "user": "invitebot",
        "sessionSeconds": 120,
        "roomMembership": "invite",
        "noticeRoom": "#admins:example.org",
        "rooms": ["#welcome:example.org", "!space:example.org"],
    },
}
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "onboarding": ONBOARDING,
    "configured": CONFIGURED,
    "synapse": SYNAPSE,
    "mas-upstream": MAS_UPSTREAM,
    "namespaced": {"watchNamespaces": ["team-a", "team-b"]},
    "cluster-wide": {"clusterWide": True},
    "network-policy": NETWORK_POLICY_VALUES,
    "service-monitor": {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"r": "p"}}}},
}

# The operator's rights, rule by rule (why each is needed: templates/_helpers.tpl, "mio.rules").
EXPECTED_RULES = [
    {
        "apiGroups": ["matrix-invite.dev"],
        "resources": ["invitations"],
        "verbs": ["get", "list", "watch", "patch"],
    },
    {"apiGroups": ["matrix-invite.dev"], "resources": ["invitations/status"], "verbs": ["patch"]},
    {
        "apiGroups": ["matrix-invite.dev"],
        "resources": ["invitations/finalizers"],
        "verbs": ["update"],
    },
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create", "patch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
]


def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((CHART_DIR / "values.schema.json").read_text())
    return loaded


def chart_values() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    return loaded


# --- the CRD -----------------------------------------------------------------------------------


def test_chart_crd_file_is_a_byte_for_byte_copy_of_crds() -> None:
    assert CHART_CRD_FILE.read_bytes() == CRD_FILE.read_bytes(), (
        "charts/.../files/crds differs from crds/: run `make chart-crds`"
    )


def test_rendered_crd_is_the_repository_crd_plus_labels_and_keep() -> None:
    crd = one(render(), "CustomResourceDefinition")
    expected = yaml.safe_load(CRD_FILE.read_text())
    meta = crd["metadata"]
    assert meta.pop("annotations") == {"helm.sh/resource-policy": "keep"}
    labels = meta.pop("labels")
    assert expected["metadata"].pop("labels").items() <= labels.items()
    assert labels["app.kubernetes.io/managed-by"] == "Helm"
    assert crd == expected


def test_crds_can_be_left_out_or_let_go() -> None:
    assert not by_kind(render({"crds": {"enabled": False}}), "CustomResourceDefinition")
    crd = one(
        render({"crds": {"keep": False, "annotations": {"example.org/a": "b"}}}),
        "CustomResourceDefinition",
    )
    assert crd["metadata"]["annotations"] == {"example.org/a": "b"}


# --- lint and template of every variant --------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_lint_passes(variant: str) -> None:
    result = lint(VARIANTS[variant])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[ERROR]" not in result.stdout
    assert "[WARNING]" not in result.stdout


@pytest.mark.parametrize("variant", VARIANTS)
def test_template_renders_the_workload_for_every_variant(variant: str) -> None:
    objects = render(VARIANTS[variant])
    kinds = {o["kind"] for o in objects}
    assert {"CustomResourceDefinition", "ServiceAccount", "Deployment", "Service"} <= kinds
    assert len({key(o) for o in objects}) == len(objects), "two objects share a name"
    assert all(
        "matrix-invite-operator" in o["metadata"]["name"] or o["kind"] == "CustomResourceDefinition"
        for o in objects
    )


LEADER_ELECTION = "-leader-election"


def watch_rbac(objects: list[Manifest], kind: str) -> list[Manifest]:
    """The Roles or RoleBindings for the watched namespaces, without the Lease's."""
    return [
        o for o in by_kind(objects, kind) if not o["metadata"]["name"].endswith(LEADER_ELECTION)
    ]


def lease_rbac(objects: list[Manifest]) -> tuple[Manifest, Manifest]:
    (role,) = [
        o for o in by_kind(objects, "Role") if o["metadata"]["name"].endswith(LEADER_ELECTION)
    ]
    (binding,) = [
        o
        for o in by_kind(objects, "RoleBinding")
        if o["metadata"]["name"].endswith(LEADER_ELECTION)
    ]
    return role, binding


def test_default_is_namespaced_to_the_release_namespace() -> None:
    objects = render(namespace="invites")
    assert not by_kind(objects, "ClusterRole")
    assert not by_kind(objects, "ClusterRoleBinding")
    (role,), (binding,) = watch_rbac(objects, "Role"), watch_rbac(objects, "RoleBinding")
    assert role["metadata"]["namespace"] == "invites"
    assert role["rules"] == EXPECTED_RULES
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "matrix-invite-operator", "namespace": "invites"}
    ]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    # The Pod's own namespace, so that a kustomize `namespace:` cannot leave it behind.
    assert env_of(objects)["MATRIX_INVITE_NAMESPACES"] == {
        "fieldRef": {"fieldPath": "metadata.namespace"}
    }


def test_namespaced_mode_grants_each_watched_namespace_and_no_other() -> None:
    objects = render({"watchNamespaces": ["team-a", "team-b"]}, namespace="operators")
    roles = watch_rbac(objects, "Role")
    bindings = watch_rbac(objects, "RoleBinding")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    assert all(r["rules"] == EXPECTED_RULES for r in roles)
    assert all(
        b["subjects"][0]
        == {"kind": "ServiceAccount", "name": "matrix-invite-operator", "namespace": "operators"}
        for b in bindings
    )
    assert not by_kind(objects, "ClusterRole")
    assert env_of(objects)["MATRIX_INVITE_NAMESPACES"] == "team-a,team-b"


def test_cluster_wide_mode_uses_one_cluster_role_with_the_same_rules() -> None:
    objects = render({"clusterWide": True})
    assert not watch_rbac(objects, "Role")
    assert not watch_rbac(objects, "RoleBinding")
    assert one(objects, "ClusterRole")["rules"] == EXPECTED_RULES
    binding = one(objects, "ClusterRoleBinding")
    assert binding["roleRef"]["kind"] == "ClusterRole"
    assert binding["subjects"][0]["kind"] == "ServiceAccount"
    assert env_of(objects)["MATRIX_INVITE_NAMESPACES"] == ""
    assert Settings(namespaces="").namespaces == []  # "" means the whole cluster


def test_rbac_can_be_left_to_the_admin() -> None:
    objects = render({"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "x"}})
    assert not {"Role", "RoleBinding", "ServiceAccount"} & {o["kind"] for o in objects}
    assert pod_template(objects)["spec"]["serviceAccountName"] == "x"


@pytest.mark.parametrize("values", [{}, {"clusterWide": True}, {"watchNamespaces": ["team-a"]}])
def test_the_lease_is_the_one_extra_right_and_only_in_the_release_namespace(
    values: dict[str, Any],
) -> None:
    objects = render(values, namespace="operators")
    role, binding = lease_rbac(objects)
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "operators"
    # create cannot be limited to a name; reading and renewing only this one Lease
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["matrix-invite-operator"],
            "verbs": ["get", "update"],
        },
    ]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "matrix-invite-operator", "namespace": "operators"}
    ]
    env = env_of(objects)
    assert env["MATRIX_INVITE_LEASE_NAME"] == "matrix-invite-operator"
    assert env["MATRIX_INVITE_LEASE_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


# --- the Deployment ----------------------------------------------------------------------------


def test_deployment_rolls_replicas_that_elect_one_with_a_liveness_probe() -> None:
    deployment = one(render(), "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    # Safe because of the Lease: the new pod waits as a standby until the old one lets go.
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    assert one(render({"replicaCount": 2}), "Deployment")["spec"]["replicas"] == 2
    (container,) = spec["template"]["spec"]["containers"]
    assert container["args"] == ["run"]  # `run` waits for the Lease, then Kopf: __main__.run
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    assert probe["port"] == "health"
    env = env_of([deployment])
    assert (env["MATRIX_INVITE_LIVENESS_PORT"], env["MATRIX_INVITE_METRICS_PORT"]) == (
        "8080",
        "9090",
    )


def test_pod_meets_the_restricted_profile_with_a_read_only_root() -> None:
    pod = pod_template(render())["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    context = container["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    tmp = {"name": "tmp", "mountPath": "/tmp"}  # noqa: S108
    assert tmp in container["volumeMounts"]
    assert any(v["name"] == "tmp" and "emptyDir" in v for v in pod["volumes"])


def test_credentials_come_from_existing_secrets_as_files() -> None:
    objects = render(CONFIGURED)
    pod = pod_template(objects)["spec"]
    (container,) = pod["containers"]
    env = env_of(objects)
    assert "MATRIX_INVITE_MAS_CLIENT_SECRET" not in env
    assert "MATRIX_INVITE_SMTP_PASSWORD" not in env
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for variable, volume, secret, key_ in [
        ("MATRIX_INVITE_MAS_CLIENT_SECRET_FILE", "mas-client-secret", "invite-mas", "secret"),
        ("MATRIX_INVITE_SMTP_PASSWORD_FILE", "smtp-password", "invite-smtp", "password"),
    ]:
        source = volumes[volume]["secret"]
        assert source["secretName"] == secret
        (item,) = source["items"]
        assert item["key"] == key_
        assert env[variable] == f"{mounts[volume]}/{item['path']}"
    ca = volumes["mas-ca"]["configMap"]
    assert env["MATRIX_INVITE_MAS_CA_BUNDLE"] == f"{mounts['mas-ca']}/{ca['items'][0]['path']}"
    assert env["MATRIX_INVITE_MAS_URL"] == CONFIGURED["mas"]["url"]
    assert env["MATRIX_INVITE_MAS_CLIENT_ID"] == CONFIGURED["mas"]["clientId"]
    assert env["MATRIX_INVITE_SMTP_USERNAME"] == "invitations@example.org"


def test_synapse_backend_gets_its_url_and_admin_token_as_a_file() -> None:
    objects = render(SYNAPSE)
    env = env_of(objects)
    assert env["MATRIX_INVITE_BACKEND"] == "synapse"
    assert env["MATRIX_INVITE_SYNAPSE_URL"] == "http://synapse.matrix.svc:8008"
    assert "MATRIX_INVITE_SYNAPSE_ADMIN_TOKEN" not in env
    pod = pod_template(objects)["spec"]
    (container,) = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    source = volumes["synapse-admin-token"]["secret"]
    assert source["secretName"] == "invite-synapse"
    (item,) = source["items"]
    assert item["key"] == "access-token"
    token_file = f"{mounts['synapse-admin-token']}/{item['path']}"
    assert env["MATRIX_INVITE_SYNAPSE_ADMIN_TOKEN_FILE"] == token_file
    assert env["MATRIX_INVITE_SYNAPSE_CA_BUNDLE"].startswith(mounts["synapse-ca"] + "/")
    assert env_of(render())["MATRIX_INVITE_BACKEND"] == "mas"


def test_mas_sign_up_and_provider_name_reach_the_operator() -> None:
    env = env_of(render(MAS_UPSTREAM))
    assert env["MATRIX_INVITE_MAS_SIGN_UP"] == "upstream"
    assert env["MATRIX_INVITE_MAS_UPSTREAM_PROVIDER_NAME"] == 'Corp <SSO> "Login"'
    default = env_of(render())
    # Empty values leave these to MAS's site-config (and the mail's own wording).
    for unset in ("SIGN_UP", "UPSTREAM_PROVIDER_NAME"):
        assert f"MATRIX_INVITE_MAS_{unset}" not in default
    assert "MATRIX_INVITE_SERVER_NAME" not in default
    assert "MATRIX_INVITE_ELEMENT_WEB_URL" not in default
    web = env_of(render({"invitations": {"elementWebUrl": "https://chat.example.org"}}))
    assert web["MATRIX_INVITE_ELEMENT_WEB_URL"] == "https://chat.example.org"


def test_onboarding_values_reach_the_operator() -> None:
    env = env_of(render(ONBOARDING))
    assert env["MATRIX_INVITE_HOMESERVER_URL"] == "http://ess-synapse-main.ess.svc:8008"
    assert env["MATRIX_INVITE_ONBOARDING_USER"] == "invitebot"
    assert env["MATRIX_INVITE_ONBOARDING_SESSION_SECONDS"] == "120"
    assert env["MATRIX_INVITE_ROOM_MEMBERSHIP"] == "invite"
    assert env["MATRIX_INVITE_NOTICE_ROOM"] == "#admins:example.org"
    assert env["MATRIX_INVITE_ONBOARDING_ROOMS"] == "#welcome:example.org,!space:example.org"
    settings = Settings(onboarding_rooms=env["MATRIX_INVITE_ONBOARDING_ROOMS"])
    assert settings.onboarding_rooms == ["#welcome:example.org", "!space:example.org"]
    default = env_of(render())
    assert "MATRIX_INVITE_ONBOARDING_ROOMS" not in default
    assert default["MATRIX_INVITE_ROOM_MEMBERSHIP"] == "join"
    assert "MATRIX_INVITE_ONBOARDING_USER" not in default  # empty: no personal sessions


@pytest.mark.parametrize(
    "variant", ["default", "configured", "synapse", "mas-upstream", "cluster-wide", "onboarding"]
)
def test_every_variable_the_chart_sets_is_a_setting_the_operator_reads(variant: str) -> None:
    env = env_of(render(VARIANTS[variant]))
    names = {n.removeprefix("MATRIX_INVITE_").lower() for n in env}
    assert names <= set(Settings.model_fields), names - set(Settings.model_fields)
    plain = {k: v for k, v in env.items() if isinstance(v, str)}
    files = {k: "/dev/null" for k in plain if k.endswith("_FILE") or k.endswith("_BUNDLE")}
    Settings.model_validate(  # what the Pod would start with parses
        {k.removeprefix("MATRIX_INVITE_").lower(): v for k, v in {**plain, **files}.items()}
    )


def test_metrics_can_be_turned_off() -> None:
    objects = render({"metrics": {"enabled": False}})
    assert not by_kind(objects, "Service")
    assert env_of(objects)["MATRIX_INVITE_METRICS_PORT"] == "0"


def test_service_monitor_scrapes_the_metrics_service() -> None:
    objects = render(VARIANTS["service-monitor"])
    service = one(objects, "Service")
    monitor = one(objects, "ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["metadata"]["labels"]["r"] == "p"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"] == "metrics"
    assert (
        service["spec"]["selector"].items() <= pod_template(objects)["metadata"]["labels"].items()
    )


def test_network_policy_allows_only_dns_api_server_mas_and_smtp() -> None:
    objects = render(NETWORK_POLICY_VALUES)
    policy = one(objects, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["podSelector"]["matchLabels"].items() <= (
        pod_template(objects)["metadata"]["labels"].items()
    )
    egress = policy["egress"]
    assert len(egress) == 4
    assert all(rule.get("to") for rule in egress), "a rule without peers allows everything"
    assert [rule["to"] for rule in egress[1:]] == [
        NETWORK_POLICY_VALUES["networkPolicy"][name]["to"] for name in ("apiServer", "mas", "smtp")
    ]
    assert {p["port"] for p in egress[0]["ports"]} == {53}
    (ingress,) = policy["ingress"]
    assert ingress["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert not by_kind(render(), "NetworkPolicy")


# --- values.schema.json ------------------------------------------------------------------------


def test_schema_is_valid_and_accepts_the_defaults_and_every_variant() -> None:
    jsonschema.Draft7Validator.check_schema(schema())
    for values in VARIANTS.values():
        jsonschema.validate(_merged(values), schema(), cls=jsonschema.Draft7Validator)


BAD_VALUES: dict[str, tuple[dict[str, Any], str]] = {
    "cluster-wide with namespaces": (
        {"clusterWide": True, "watchNamespaces": ["a"]},
        "watchNamespaces",
    ),
    "namespace not a DNS label": ({"watchNamespaces": ["Team_A"]}, "watchNamespaces"),
    "MAS URL without scheme": ({"mas": {"url": "mas:8081"}}, "mas/url"),
    "MAS client id not a ULID": ({"mas": {"clientId": "operator"}}, "mas/clientId"),
    "unknown SMTP TLS mode": ({"smtp": {"tls": "ssl"}}, "smtp/tls"),
    "SMTP port out of range": ({"smtp": {"port": 70000}}, "smtp/port"),
    "SMTP login without a password Secret": ({"smtp": {"username": "bot"}}, "existingSecret"),
    "NetworkPolicy without peers": ({"networkPolicy": {"enabled": True}}, "networkPolicy"),
    "validity not a Go duration": (
        {"invitations": {"defaultValidity": "7d"}},
        "defaultValidity",
    ),
    "unsupported locale": ({"mail": {"defaultLocale": "fr"}}, "defaultLocale"),
    "sender name on two lines": ({"mail": {"fromName": "a\nb"}}, "fromName"),
    "image digest not a digest": ({"image": {"digest": "latest"}}, "digest"),
    "replicas are not configurable": ({"replicas": 2}, "replicas"),
    "typo in a key": ({"metrics": {"enable": False}}, "enable"),
    "unknown log format": ({"logFormat": "xml"}, "logFormat"),
    "unknown backend": ({"backend": "dendrite"}, "backend"),
    "unknown MAS sign-up": ({"mas": {"signUp": "oidc"}}, "signUp"),
    "Element Web URL without scheme": (
        {"invitations": {"elementWebUrl": "chat.example.org"}},
        "elementWebUrl",
    ),
    "provider name on two lines": (
        {"mas": {"upstreamProviderName": "a\nb"}},
        "upstreamProviderName",
    ),
    "provider name too long": (
        {"mas": {"upstreamProviderName": "x" * 101}},
        "upstreamProviderName",
    ),
    "Synapse URL without scheme": ({"synapse": {"url": "synapse:8008"}}, "synapse/url"),
    "a room that is no room": ({"onboarding": {"rooms": ["welcome"]}}, "rooms"),
    "a room listed twice": ({"onboarding": {"rooms": ["#a:example.org"] * 2}}, "rooms"),
}


@pytest.mark.parametrize("case", BAD_VALUES)
def test_schema_rejects_bad_values(case: str) -> None:
    values, where = BAD_VALUES[case]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(_merged(values), schema(), cls=jsonschema.Draft7Validator)
    with pytest.raises(HelmError) as refused:
        render(values)
    assert "values don't meet the specifications of the schema" in refused.value.stderr
    assert where in refused.value.stderr


def _merged(overrides: dict[str, Any]) -> dict[str, Any]:
    def merge(base: Any, extra: Any) -> Any:
        if isinstance(base, dict) and isinstance(extra, dict):
            return {
                k: merge(base.get(k), extra[k]) if k in extra else base[k] for k in {*base, *extra}
            }
        return extra

    merged: dict[str, Any] = merge(chart_values(), overrides)
    return merged


def test_values_yaml_documents_every_key_it_sets() -> None:
    text = (CHART_DIR / "values.yaml").read_text()
    # Each top-level key has a comment or is self-explanatory by its block.
    assert re.search(r"^clusterWide: false$", text, re.MULTILINE)
    assert set(chart_values()) <= set(schema()["properties"])


def _names(objects: list[Manifest]) -> set[str]:
    return {o["metadata"]["name"] for o in objects}


def test_release_name_and_overrides_shape_every_name() -> None:
    objects = render(release="invites", namespace="x")
    assert "invites-matrix-invite-operator" in _names(objects)
    objects = render({"fullnameOverride": "mio"}, namespace="x")
    assert {"mio", "mio-metrics"} <= _names(objects)
    assert render_text(namespace="x").count("namespace: x") >= 4


# --- the install guide -------------------------------------------------------------------------


def test_the_install_guides_helm_release_values_render() -> None:
    """docs/install-flux.md's HelmRelease values pass the schema and render what they promise."""
    guide = (CHART_DIR.parents[1] / "docs" / "install-flux.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", guide, re.DOTALL)
    documents = [
        d for block in blocks if "..." not in block for d in yaml.safe_load_all(block) if d
    ]
    releases = [d for d in documents if d.get("kind") == "HelmRelease"]
    # The second is the chart-from-Git variant: the same release, only its chart's source.
    (release,) = [r for r in releases if "values" in r["spec"]]
    for variant in releases:
        assert variant["metadata"] == release["metadata"]
    assert release["spec"]["install"]["crds"] == release["spec"]["upgrade"]["crds"]
    # Installed into ESS's namespace, watching the Invitations' namespace the guide creates.
    installed_into = release["metadata"]["namespace"]
    (invitations_namespace,) = [
        d["metadata"]["name"] for d in documents if d.get("kind") == "Namespace"
    ]
    assert installed_into != invitations_namespace
    values = release["spec"]["values"]
    assert values["watchNamespaces"] == [invitations_namespace]
    objects = render(values, release=release["metadata"]["name"], namespace=installed_into)
    env = env_of(objects)
    assert env["MATRIX_INVITE_MAS_CLIENT_ID"] == "01J44RKQYM4G3TNVANTMTDYTX6"
    assert env["MATRIX_INVITE_NAMESPACES"] == invitations_namespace
    # Rights on Invitations only where they are, granted to the ServiceAccount in ESS's
    # namespace; in ESS's namespace nothing but the leader-election Lease.
    roles = {r["metadata"]["namespace"]: r for r in by_kind(objects, "Role")}
    assert set(roles) == {invitations_namespace, installed_into}
    assert {rule["apiGroups"][0] for rule in roles[installed_into]["rules"]} == {
        "coordination.k8s.io"
    }
    assert {res for rule in roles[installed_into]["rules"] for res in rule["resources"]} == {
        "leases"
    }
    bindings = {b["metadata"]["namespace"]: b for b in by_kind(objects, "RoleBinding")}
    assert set(bindings) == {invitations_namespace, installed_into}
    for binding in bindings.values():
        assert [s["namespace"] for s in binding["subjects"]] == [installed_into]
    policy = one(objects, "NetworkPolicy")
    assert policy["metadata"]["namespace"] == installed_into
    assert len(policy["spec"]["egress"]) == 4
    kustomizations = [d for d in documents if d.get("kind") == "Kustomization"]
    (invitations,) = [k for k in kustomizations if k["metadata"]["name"] == "invitations"]
    assert invitations["spec"]["dependsOn"] == [{"name": "matrix-invite-operator"}]
    (check,) = invitations["spec"]["healthCheckExprs"]
    assert (check["apiVersion"], check["kind"]) == ("matrix-invite.dev/v1alpha1", "Invitation")
