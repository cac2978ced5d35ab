"""Faults, restarts and crashes: after each scenario the invariants of `invariants.py` hold.

MAS and SMTP faults come from the doubles' knobs; crashes are SIGKILLs timed by the doubles at
the exact step boundary (a write reaching MAS, a mail reaching the relay); the API server and
etcd are restarted for real. A long sync interval keeps MAS faults aimed at the reconcile steps.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.controlplane.cluster import ApiError, ControlPlane
from tests.doubles.mas import TOKENS_PATH, AdminApiServing, MasDouble
from tests.doubles.smtp import SmtpDouble
from tests.integration.conftest import MAS_CLIENT_ID, MAS_CLIENT_SECRET
from tests.integration.harness import Body, InvitationsApi, condition, wait_until
from tests.integration.invariants import InvariantReport, check_invariants
from tests.operator_process import OperatorProcess, free_port

pytestmark = pytest.mark.integration

QUIET_SYNC = {"MATRIX_INVITE_SYNC_INTERVAL_SECONDS": "300"}
SCENARIOS: list[tuple[str, InvariantReport]] = []


@pytest.fixture(scope="module", autouse=True)
def scenario_table() -> Iterator[None]:
    yield
    if SCENARIOS:
        rows = [
            f"{name:<44} {r.invitations:>3} {r.checks:>6} {len(r.violations):>10} "
            f"{r.duplicate_mails:>10}"
            for name, r in SCENARIOS
        ]
        header = f"{'scenario':<44} {'inv':>3} {'checks':>6} {'violations':>10} {'dup. mails':>10}"
        print("\n" + "\n".join([header, *rows]))


def settle(
    name: str,
    invitations: InvitationsApi,
    mas: MasDouble,
    smtp: SmtpDouble,
    *,
    duplicate_mail_allowed: bool = False,
) -> InvariantReport:
    report = check_invariants(invitations, mas, smtp, duplicate_mail_allowed=duplicate_mail_allowed)
    SCENARIOS.append((name, report))
    assert report.violations == []
    return report


def ready_reason(body: Body) -> str | None:
    ready = condition(body, "Ready")
    return ready["reason"] if ready else None


def wait_reason(invitations: InvitationsApi, name: str, reason: str, timeout: float = 20) -> Body:
    return invitations.wait_for(
        name, lambda b: ready_reason(b) == reason, timeout=timeout, what=f"reason {reason}"
    )


def writes(mas: MasDouble, status: int | None = None) -> int:
    return mas.request_count("POST", TOKENS_PATH, status)


# --- MAS ---------------------------------------------------------------------------------------


def test_mas_500s_show_as_reconciling_then_heal(
    invitations: InvitationsApi,
    mas: MasDouble,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    start_operator(**QUIET_SYNC)
    mas.fail_next(3, 500, method="POST")
    invitations.apply("a", email="a@example.org")
    pending = wait_reason(invitations, "a", "MasUnavailable")
    assert condition(pending, "Reconciling")["status"] == "True"  # type: ignore[index]
    assert pending["status"]["phase"] == "Pending"
    invitations.wait_for_phase("a", "Sent", timeout=30)
    settle("MAS answers 500 three times", invitations, mas, smtp)


def test_mas_timeouts_heal_without_a_second_token(
    invitations: InvitationsApi,
    mas: MasDouble,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    start_operator(MATRIX_INVITE_HTTP_TIMEOUT_SECONDS="1", **QUIET_SYNC)
    mas.delay(2.5)  # longer than the client waits; MAS still carries the create out later
    invitations.apply("slowpoke", email="slowpoke@example.org")
    wait_reason(invitations, "slowpoke", "MasUnavailable")
    mas.delay(0)
    invitations.wait_for_phase("slowpoke", "Sent", timeout=30)
    assert len(mas.tokens()) == 1
    settle("MAS times out", invitations, mas, smtp)


def test_slow_mas_is_only_slow(
    invitations: InvitationsApi,
    mas: MasDouble,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    start_operator(**QUIET_SYNC)
    mas.delay(0.7)
    invitations.apply("slow", email="slow@example.org")
    invitations.wait_for_phase("slow", "Sent", timeout=30)
    assert writes(mas) == 1
    settle("MAS answers slowly", invitations, mas, smtp)


def test_mas_refusing_connections_until_it_starts(
    invitations: InvitationsApi,
    mas: MasDouble,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    port = free_port()
    start_operator(MATRIX_INVITE_MAS_URL=f"http://127.0.0.1:{port}", **QUIET_SYNC)
    invitations.apply("early", email="early@example.org")
    body = wait_reason(invitations, "early", "MasUnavailable")
    assert "127.0.0.1" in body["status"]["message"]
    with MasDouble(port=port, client_id=MAS_CLIENT_ID, client_secret=MAS_CLIENT_SECRET) as late:
        invitations.wait_for_phase("early", "Sent", timeout=40)
        settle("MAS refuses connections, then starts", invitations, late, smtp)
        assert late.spec_violations == []


def test_expired_access_token_is_renewed_once(
    invitations: InvitationsApi,
    mas: MasDouble,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    start_operator(**QUIET_SYNC)
    invitations.apply("first", email="first@example.org")
    invitations.wait_for_phase("first", "Sent")
    # The startup sync pass must be over: its GET would otherwise meet the expired token first.
    wait_until("the startup sync pass", lambda: mas.request_count("GET", TOKENS_PATH) >= 1, 30)
    issued = mas.access_tokens_issued
    mas.expire_access_tokens()
    invitations.apply("second", email="second@example.org")
    invitations.wait_for_phase("second", "Sent")
    assert mas.request_count("POST", TOKENS_PATH, 401) == 1
    assert mas.access_tokens_issued == issued + 1
    settle("access token expires (401, renewed)", invitations, mas, smtp)


def test_lost_create_response_finds_the_token(
    invitations: InvitationsApi,
    mas: MasDouble,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    start_operator(**QUIET_SYNC)
    mas.drop_response_after_commit_next(1)
    invitations.apply("lost", email="lost@example.org")
    invitations.wait_for_phase("lost", "Sent", timeout=30)
    assert len(mas.tokens()) == 1
    assert writes(mas, 409) + writes(mas, 201) >= 2 or writes(mas, 0) >= 1
    settle("create answered by a dropped connection", invitations, mas, smtp)


def test_racing_create_500_finds_the_token(
    invitations: InvitationsApi,
    mas: MasDouble,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    start_operator(**QUIET_SYNC)
    # MAS created it, then answered 500; only a POST takes the fault, not a sync pass's GET.
    mas.fail_next(1, 500, commit=True, method="POST")
    invitations.apply("race", email="race@example.org")
    invitations.wait_for_phase("race", "Sent", timeout=30)
    assert len(mas.tokens()) == 1
    assert writes(mas, 500) == 1
    settle("create answered 500 after committing", invitations, mas, smtp)


def test_mas_clock_ahead_is_named_and_the_mail_goes_out_once_the_clocks_agree(
    invitations: InvitationsApi,
    mas: MasDouble,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    operator = start_operator()  # the sync pass on (1 s): it must not hide the cause, and must mail
    mas.set_clock_offset(2 * 3600)  # MAS 2 h ahead: a 1 h token is expired by its clock
    invitations.apply("skew", email="skew@example.org", validFor="1h")
    body = wait_reason(invitations, "skew", "MasClockAhead")
    assert condition(body, "Reconciling")["status"] == "True"  # type: ignore[index]
    assert "clock" in body["status"]["message"]
    assert body["status"]["tokenId"] is not None
    invitations.wait_for_events("skew", "MasClockAhead")  # one Warning for kubectl describe
    operator.wait_for_sync_pass()  # the sync pass has seen it: still named, still no mail
    assert ready_reason(invitations.get("skew") or {}) == "MasClockAhead"
    assert smtp.messages == []
    # No handler retries it: the sync pass sees MAS agree and hands it back for the mail.
    mas.set_clock_offset(0)
    invitations.wait_for_phase("skew", "Sent", timeout=30)
    assert len(smtp.messages) == 1
    assert len(mas.tokens()) == 1
    settle("MAS clock 2 h ahead, then in agreement", invitations, mas, smtp)


@pytest.mark.parametrize("answer", ["absent", "web-page"])
def test_no_admin_api_at_the_url_heals_without_an_edit(
    answer: AdminApiServing,
    invitations: InvitationsApi,
    mas: MasDouble,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    # "absent": the URL's port is a MAS listener without the adminapi resource (404 to every
    # Admin API path); "web-page": something serves HTML there. Fixed on MAS's side, no edit.
    start_operator(**QUIET_SYNC)
    mas.serve_admin_api(answer)
    invitations.apply("lost-api", email="lost-api@example.org")
    body = invitations.wait_for_phase("lost-api", "Failed", timeout=20)
    assert ready_reason(body) == "MasApiNotFound"
    assert condition(body, "Stalled")["status"] == "True"  # type: ignore[index]
    assert "MATRIX_INVITE_MAS_URL" in body["status"]["message"]
    generation = body["metadata"]["generation"]
    mas.serve_admin_api("served")
    healed = invitations.wait_for_phase("lost-api", "Sent", timeout=30)
    assert healed["metadata"]["generation"] == generation
    settle(f"no Admin API at the URL ({answer}), then fixed", invitations, mas, smtp)


def test_a_token_vanishing_between_two_calls_is_retried(
    invitations: InvitationsApi,
    mas: MasDouble,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    start_operator(**QUIET_SYNC)
    wait_until("the startup sync pass", lambda: mas.request_count("GET", TOKENS_PATH) >= 1, 30)

    def other_limit(answer: Any) -> Any:
        answer["data"]["attributes"]["usage_limit"] = 5
        return answer

    # The create's answer shows another limit, so the operator corrects it at once; MAS then
    # says the token does not exist (as after a restore): TokenNotFound, retried, healed.
    mas.mangle_next_response(other_limit)
    mas.fail_next(1, 404, method="PUT")
    invitations.apply("vanish", email="vanish@example.org")
    body = wait_reason(invitations, "vanish", "TokenNotFound")
    assert condition(body, "Reconciling")["status"] == "True"  # type: ignore[index]
    invitations.wait_for_phase("vanish", "Sent", timeout=30)
    assert len(mas.tokens()) == 1
    settle("token unknown to MAS between two calls", invitations, mas, smtp)


# --- SMTP (4xx retried and 5xx stalling: tests/integration/test_mail_delivery.py) -------------


def test_relay_refusing_connections_then_accepting(
    invitations: InvitationsApi,
    mas: MasDouble,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    start_operator(**QUIET_SYNC)
    smtp.refuse_connections()
    invitations.apply("mailme", email="mailme@example.org")
    body = wait_reason(invitations, "mailme", "MailDeferred")
    assert "connection refused" in body["status"]["message"]
    smtp.accept_connections()
    invitations.wait_for_phase("mailme", "Sent", timeout=30)
    assert len(smtp.messages) == 1
    settle("relay refuses connections, then accepts", invitations, mas, smtp)


def test_untrusted_relay_certificate_stalls_then_heals(
    invitations: InvitationsApi,
    mas: MasDouble,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    start_operator(**QUIET_SYNC)
    smtp.break_tls()
    invitations.apply("tls", email="tls@example.org")
    body = invitations.wait_for_phase("tls", "Failed", timeout=20)
    assert "MATRIX_INVITE_SMTP_CA_BUNDLE" in body["status"]["message"]
    # Stalled for Flux, yet retried slowly: fixing the relay heals it without touching Git.
    smtp.fix_tls()
    invitations.wait_for_phase("tls", "Sent", timeout=30)
    settle("relay presents an untrusted certificate", invitations, mas, smtp)


def test_refused_smtp_login_stalls_and_says_so_once_per_retry(
    invitations: InvitationsApi,
    mas: MasDouble,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
    tmp_path: Path,
) -> None:
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password")
    operator = start_operator(MATRIX_INVITE_SMTP_PASSWORD_FILE=str(wrong), **QUIET_SYNC)
    invitations.apply("login", email="login@example.org")
    body = invitations.wait_for_phase("login", "Failed", timeout=20)
    assert "SMTP login refused" in body["status"]["message"]
    # One slow retry (2 s in tests) later the operator is still up: Kopf has logged two attempts.
    wait_until(
        "a slow retry of the refused login",
        lambda: len(operator.log_lines("failed temporarily", "SMTP login refused")) >= 2,
        30,
    )
    assert operator.returncode is None
    refusals = operator.logs().count("SMTP login refused")
    assert 1 <= refusals <= 6, f"{refusals} log lines about one refused login: a flood"
    settle("SMTP login refused", invitations, mas, smtp)


# --- crashes at step boundaries -----------------------------------------------------------------


def test_crash_after_the_secret_write(
    invitations: InvitationsApi,
    mas: MasDouble,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    first = start_operator(**QUIET_SYNC)
    mas.on_next_write(first.kill, when="before")  # the Secret exists, the create never lands
    invitations.apply("c1", email="c1@example.org")
    _wait_dead(first)
    assert mas.tokens() == []
    start_operator(**QUIET_SYNC)
    invitations.wait_for_phase("c1", "Sent", timeout=30)
    settle("SIGKILL after the Secret write", invitations, mas, smtp)


def test_crash_after_the_mas_create(
    invitations: InvitationsApi,
    mas: MasDouble,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    first = start_operator(**QUIET_SYNC)
    mas.on_next_write(first.kill, when="after")  # created in MAS, id never recorded
    invitations.apply("c2", email="c2@example.org")
    _wait_dead(first)
    assert len(mas.tokens()) == 1
    assert invitations.status("c2").get("tokenId") is None
    start_operator(**QUIET_SYNC)
    invitations.wait_for_phase("c2", "Sent", timeout=30)
    assert len(mas.tokens()) == 1
    assert writes(mas, 409) == 1
    settle("SIGKILL after the MAS create", invitations, mas, smtp)


def test_crash_after_the_relay_accepted_the_mail(
    invitations: InvitationsApi,
    mas: MasDouble,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    first = start_operator(**QUIET_SYNC)
    smtp.on_next_message(first.kill)  # the relay has the mail; the status never records it
    invitations.apply("c3", email="c3@example.org")
    _wait_dead(first)
    start_operator(**QUIET_SYNC)
    invitations.wait_for_phase("c3", "Sent", timeout=30)
    assert len(smtp.messages) == 2, "the documented window: one duplicate, same token"
    first_mail, second_mail = smtp.messages
    assert first_mail.message["Message-ID"] == second_mail.message["Message-ID"]
    settle(
        "SIGKILL between relay accept and status write",
        invitations,
        mas,
        smtp,
        duplicate_mail_allowed=True,
    )


def test_deleted_while_down_after_an_unrecorded_create_leaves_no_orphan(
    invitations: InvitationsApi,
    mas: MasDouble,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    first = start_operator(**QUIET_SYNC)
    mas.on_next_write(first.kill, when="after")
    invitations.apply("orphan", email="orphan@example.org")
    _wait_dead(first)
    invitations.kubectl("delete", "invitation", "orphan", "--wait=false")
    start_operator(**QUIET_SYNC)
    invitations.wait_gone("orphan", timeout=30)
    (token,) = mas.tokens()
    assert token["valid"] is False
    assert token["revoked_at"] is not None
    settle("deleted while down, token id never recorded", invitations, mas, smtp)


def test_crash_after_a_reissue_leaves_no_token_after_deletion(
    invitations: InvitationsApi,
    mas: MasDouble,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    first = start_operator(**QUIET_SYNC)
    invitations.apply("reissue", email="reissue@example.org")
    body = invitations.wait_for_phase("reissue", "Sent")
    secret_name, old_id = body["status"]["secretName"], body["status"]["tokenId"]
    # Someone replaces the Secret's token; the next reconcile (an edit) revokes the old token
    # and issues the Secret's; the operator dies right after MAS created it, id unrecorded.
    replacement = "Replaced0123456789abcdef"
    invitations.kubectl(
        "patch",
        "secret",
        secret_name,
        "--type=merge",
        "-p",
        json.dumps({"stringData": {"token": replacement}}),
    )
    mas.on_next_write(first.kill, when="after", path=TOKENS_PATH)  # the create, not the revoke
    invitations.patch_spec("reissue", resend="again")
    _wait_dead(first)
    status = invitations.status("reissue")
    assert status["tokenId"] == old_id, "the new token's id must be unrecorded for this test"
    (new,) = [t for t in mas.tokens() if t["token"] == replacement]
    assert new["valid"] is True
    invitations.kubectl("delete", "invitation", "reissue", "--wait=false")
    start_operator(**QUIET_SYNC)
    invitations.wait_gone("reissue", timeout=30)
    assert all(not t["valid"] for t in mas.tokens()), mas.tokens()
    assert (mas.token(new["id"]) or {})["revoked_at"] is not None
    settle("deleted after a crash between re-issue and record", invitations, mas, smtp)


def test_a_foreign_secret_of_our_name_never_blocks_deletion(
    invitations: InvitationsApi,
    mas: MasDouble,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    start_operator(**QUIET_SYNC)
    invitations.kubectl(
        "create", "secret", "generic", "squat-invite-token", "--from-literal=token=NotOurs12345"
    )
    invitations.apply("squat", email="squat@example.org")
    body = invitations.wait_for_phase("squat", "Failed", timeout=20)
    assert ready_reason(body) == "SecretConflict"
    invitations.kubectl("delete", "invitation", "squat", "--wait=false")
    invitations.wait_gone("squat", timeout=20)
    assert invitations.secret("squat-invite-token") is not None, "not ours: left alone"
    assert mas.tokens() == []
    settle("foreign Secret of our name, then deleted", invitations, mas, smtp)


def test_born_revoked_creates_nothing_until_unrevoked(
    invitations: InvitationsApi,
    mas: MasDouble,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    operator = start_operator()
    invitations.apply("unborn", email="unborn@example.org", revoked=True)
    body = invitations.wait_for_phase("unborn", "Revoked", timeout=20)
    assert condition(body, "Ready")["status"] == "True"  # type: ignore[index]
    operator.wait_for_sync_pass()  # the sync pass has seen it: still nothing
    assert writes(mas) == 0
    assert mas.tokens() == []
    assert invitations.secret("unborn-invite-token") is None
    assert smtp.messages == []
    invitations.patch_spec("unborn", revoked=False)
    invitations.wait_for_phase("unborn", "Sent", timeout=30)
    assert writes(mas) == 1
    settle("born revoked, then un-revoked", invitations, mas, smtp)


def test_a_cluster_refusing_our_secret_stalls_then_heals(
    invitations: InvitationsApi,
    mas: MasDouble,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    # An admission policy refuses Secrets in the namespace (422): an environment error, named
    # KubernetesRejected; removing the policy heals it without an edit.
    policy = f"refuse-secrets-{invitations.namespace}"
    invitations.kubectl("apply", "-f", "-", input=_refuse_secrets_policy(policy, invitations))
    try:
        wait_until("the policy refuses Secrets", lambda: _secret_refused(invitations), 30)
        start_operator(**QUIET_SYNC)
        invitations.apply("refused", email="refused@example.org")
        body = invitations.wait_for_phase("refused", "Failed", timeout=20)
        assert ready_reason(body) == "KubernetesRejected"
        assert "Secrets are frozen" in body["status"]["message"]
    finally:
        invitations.kubectl(
            "delete",
            "validatingadmissionpolicybinding,validatingadmissionpolicy",
            policy,
            "--ignore-not-found",
        )
    invitations.wait_for_phase("refused", "Sent", timeout=40)
    settle("admission policy refuses Secrets, then removed", invitations, mas, smtp)


def _secret_refused(invitations: InvitationsApi) -> bool:
    """A server-side dry run of a Secret's creation, as `kubectl create --dry-run=server`."""
    probe = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "probe"}}
    try:
        invitations.cp.api("POST", invitations.path("secrets", core=True, dryRun="All"), probe)
    except ApiError as refused:
        return "Secrets are frozen" in refused.body
    return False


def _refuse_secrets_policy(name: str, invitations: InvitationsApi) -> str:
    return yaml.safe_dump_all(
        [
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingAdmissionPolicy",
                "metadata": {"name": name},
                "spec": {
                    "failurePolicy": "Fail",
                    "matchConstraints": {
                        "resourceRules": [
                            {
                                "apiGroups": [""],
                                "apiVersions": ["v1"],
                                "operations": ["CREATE"],
                                "resources": ["secrets"],
                            }
                        ]
                    },
                    "validations": [
                        {
                            "expression": "false",
                            "message": "Secrets are frozen",
                            "reason": "Invalid",
                        }
                    ],
                },
            },
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingAdmissionPolicyBinding",
                "metadata": {"name": name},
                "spec": {
                    "policyName": name,
                    "validationActions": ["Deny"],
                    "matchResources": {
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": invitations.namespace}
                        }
                    },
                },
            },
        ]
    )


# --- the control plane itself ------------------------------------------------------------------


def test_api_server_restart(
    invitations: InvitationsApi,
    mas: MasDouble,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
    control_plane: ControlPlane,
) -> None:
    operator = start_operator(**QUIET_SYNC)
    invitations.apply("before", email="before@example.org")
    invitations.wait_for_phase("before", "Sent")
    control_plane.restart_apiserver()
    invitations.apply("after", email="after@example.org")
    invitations.wait_for_phase("after", "Sent", timeout=60)
    assert operator.returncode is None
    settle("kube-apiserver restarted", invitations, mas, smtp)


def test_etcd_restart(
    invitations: InvitationsApi,
    mas: MasDouble,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
    control_plane: ControlPlane,
) -> None:
    operator = start_operator(**QUIET_SYNC)
    invitations.apply("e1", email="e1@example.org")
    invitations.wait_for_phase("e1", "Sent")
    control_plane.restart_etcd()
    invitations.apply("e2", email="e2@example.org")
    invitations.wait_for_phase("e2", "Sent", timeout=60)
    assert operator.returncode is None
    settle("etcd restarted", invitations, mas, smtp)


def _wait_dead(process: OperatorProcess, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while process.returncode is None:
        if time.monotonic() > deadline:
            raise AssertionError("the crash hook never fired")
        time.sleep(0.1)
