"""Two copies of the operator against one control plane: one acts, the other waits and takes over.

The standby talks to the API server and to MAS through recording proxies, so "it wrote nothing"
is counted request by request, not inferred. The active copy is SIGKILLed in the middle of a
burst: every Invitation still ends with exactly one token, no valid token is left untracked, and a
mail is sent twice only in the documented window (a crash between the relay's accept and the
status write; the same token both times). Takeover time is printed, from the SIGKILL to the moment
the Lease names the standby (docs/architecture.md). A copy whose renewals fail ends itself
before the Lease can pass on; and a watcher killed by a 410 on a page of the initial listing does
not leave the operator blind.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from matrix_invite_operator.__main__ import LOST_LEASE_EXIT_CODE
from matrix_invite_operator.leadership import LEASE_DURATION, RETRY_PERIOD
from matrix_invite_operator.runtime import CONCURRENT_RECONCILES

from tests.controlplane.cluster import ControlPlane
from tests.deploy.rbac import OPERATOR_USER
from tests.doubles.forwarding_proxy import ForwardingProxy
from tests.doubles.mas import MasDouble
from tests.doubles.smtp import SmtpDouble
from tests.integration.harness import InvitationsApi, wait_until
from tests.integration.invariants import check_invariants
from tests.operator_process import OperatorProcess

pytestmark = pytest.mark.integration

# Three times the reconciles one copy runs at once: at the kill (a third issued) up to
# CONCURRENT_RECONCILES are in flight and at least as many more have not begun, so the kill lands
# mid-burst with work both interrupted and left over for the standby (asserted at the kill). A
# larger burst proves nothing more and took ~40 s longer (100: 75 s for this test).
BURST = 3 * CONCURRENT_RECONCILES
TAKEOVER_BOUND = 30.0  # the promise; client-go's timings give LEASE_DURATION + RETRY_PERIOD
NO_THROTTLE = {"MATRIX_INVITE_MAIL_RATE_PER_MINUTE": "0"}
LEASE_PREFIX = "/apis/coordination.k8s.io/v1/"


@pytest.fixture
def kube_proxy(control_plane: ControlPlane) -> Iterator[ForwardingProxy]:
    with ForwardingProxy(control_plane.server_url) as proxy:
        yield proxy


@pytest.fixture
def mas_proxy(mas: MasDouble) -> Iterator[ForwardingProxy]:
    with ForwardingProxy(mas.url) as proxy:
        yield proxy


def kubeconfig_via(proxy: ForwardingProxy, control_plane: ControlPlane, path: Path) -> Path:
    """The operator identity's kubeconfig, pointed at the proxy (plain HTTP on loopback)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "proxied", "cluster": {"server": proxy.url}}],
        "users": [
            {"name": OPERATOR_USER, "user": {"token": control_plane.token_for(OPERATOR_USER)}}
        ],
        "contexts": [{"name": "proxied", "context": {"cluster": "proxied", "user": OPERATOR_USER}}],
        "current-context": "proxied",
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def lease_holder(invitations: InvitationsApi, name: str) -> str | None:
    lease = invitations.cp.get(f"{LEASE_PREFIX}namespaces/{invitations.namespace}/leases/{name}")
    holder = (lease or {}).get("spec", {}).get("holderIdentity")
    return str(holder) if holder else None


@pytest.fixture
def holder_behind_proxy(
    control_plane: ControlPlane,
    invitations: InvitationsApi,
    start_operator: Callable[..., OperatorProcess],
    lease_env: dict[str, str],
    kube_proxy: ForwardingProxy,
    tmp_path: Path,
) -> Callable[[], tuple[OperatorProcess, str | None, OperatorProcess]]:
    """Starts a copy that talks to the API server through `kube_proxy` and holds the Lease;
    returns it, its identity, and a standby that talks to the API server directly."""

    def start() -> tuple[OperatorProcess, str | None, OperatorProcess]:
        config = kubeconfig_via(kube_proxy, control_plane, tmp_path / "held.kubeconfig")
        holding = start_operator(KUBECONFIG=str(config), **lease_env)
        wait_until("it holds the Lease", lambda: "acquired the Lease" in holding.logs(), 30)
        holder = lease_holder(invitations, lease_env["MATRIX_INVITE_LEASE_NAME"])
        return holding, holder, start_operator(**lease_env)

    return start


def burst_manifest(invitations: InvitationsApi, names: list[str]) -> str:
    return "---\n".join(invitations.manifest(n, email=f"{n}@example.org") for n in names)


def sent_names(invitations: InvitationsApi) -> set[str]:
    return {
        body["metadata"]["name"]
        for body in invitations.listed()
        if (body.get("status") or {}).get("phase") == "Sent"
    }


def test_one_acts_the_standby_writes_nothing_and_takes_over_after_a_sigkill_mid_burst(
    control_plane: ControlPlane,
    invitations: InvitationsApi,
    mas: MasDouble,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
    lease_env: dict[str, str],
    kube_proxy: ForwardingProxy,
    mas_proxy: ForwardingProxy,
    tmp_path: Path,
) -> None:
    lease = lease_env["MATRIX_INVITE_LEASE_NAME"]
    active = start_operator(**lease_env, **NO_THROTTLE)
    wait_until("the first copy holds the Lease", lambda: "acquired the Lease" in active.logs(), 30)
    first_holder = lease_holder(invitations, lease)
    assert first_holder is not None
    standby = start_operator(
        KUBECONFIG=str(kubeconfig_via(kube_proxy, control_plane, tmp_path / "standby.kubeconfig")),
        MATRIX_INVITE_MAS_URL=mas_proxy.url,
        **lease_env,
        **NO_THROTTLE,
    )

    # Both alive: the active one does everything, the standby only looks at the Lease.
    warmup = [f"warm-{i:02d}" for i in range(10)]
    invitations.kubectl("apply", "-f", "-", input=burst_manifest(invitations, warmup))
    for name in warmup:
        invitations.wait_for_phase(name, "Sent", timeout=60)
    # A few of the standby's attempts on the Lease (one every RETRY_PERIOD), for the count.
    wait_until(
        "three attempts of the standby", lambda: len(kube_proxy.requests()) >= 3, 6 * RETRY_PERIOD
    )
    standby_kube = kube_proxy.requests()
    assert standby_kube, "the standby never asked for the Lease: the proxy sees nothing"
    assert [r for r in standby_kube if not r.path.startswith(LEASE_PREFIX)] == []
    assert [r for r in standby_kube if r.is_write] == []  # it tried, but never wrote the Lease
    assert mas_proxy.requests() == []
    assert "acquired the Lease" not in standby.logs()
    assert lease_holder(invitations, lease) == first_holder

    # The burst, and the active copy killed in its middle.
    names = [f"burst-{i:03d}" for i in range(BURST)]
    invitations.kubectl("apply", "-f", "-", input=burst_manifest(invitations, names))
    wait_until("a third of the burst issued", lambda: len(mas.tokens()) >= 10 + BURST // 3, 120)
    active.kill()
    killed_at = time.monotonic()
    issued_at_kill = len(mas.tokens()) - len(warmup)
    assert issued_at_kill < BURST, "the burst was done before the kill: nothing was interrupted"
    wait_until(
        "the standby holds the Lease",
        lambda: lease_holder(invitations, lease) not in (None, first_holder),
        TAKEOVER_BOUND + 15,
    )
    takeover = time.monotonic() - killed_at
    print(f"\ntakeover after SIGKILL: {takeover:.1f} s (lease {LEASE_DURATION:.0f} s)")
    assert takeover <= TAKEOVER_BOUND

    # The standby must finish what the killed copy left. Should it end too (a renewal not
    # answered within its deadline, on a starved machine), no copy acts any more: say so at
    # once, with its log, instead of waiting out the bound on Invitations nobody handles.
    everyone, deadline = {*warmup, *names}, time.monotonic() + 240
    while waiting := sorted(everyone - sent_names(invitations)):
        assert standby.returncode is None, (
            f"the standby ended (exit {standby.returncode}) with {len(waiting)} Invitations "
            f"not Sent, e.g. {waiting[:5]}: no copy acts now. Its log:\n{standby.log_tail()}"
        )
        assert time.monotonic() < deadline, (
            f"{len(waiting)} Invitations not Sent within 240 s after the takeover, e.g. "
            f"{waiting[:5]}. The standby's log:\n{standby.log_tail()}"
        )
        time.sleep(0.5)
    assert standby.returncode is None
    assert len(mas.tokens()) == len(warmup) + BURST, "one token per Invitation, none extra"
    report = check_invariants(invitations, mas, smtp, duplicate_mail_allowed=True)
    assert report.violations == []
    # Duplicates only in the crash window: at most the reconciles in flight when it died, each
    # the same mail again (same token, hence the same Message-ID).
    assert report.duplicate_mails <= CONCURRENT_RECONCILES
    by_recipient: dict[str, set[str]] = defaultdict(set)
    for message in smtp.messages:
        for rcpt in message.rcpt_tos:
            by_recipient[rcpt].add(str(message.message["Message-ID"]))
    assert all(len(ids) == 1 for ids in by_recipient.values())
    print(
        f"burst of {BURST} ({issued_at_kill} issued at the kill): "
        f"{report.duplicate_mails} duplicate mails, "
        f"{len(mas.tokens())} tokens for {report.invitations} Invitations"
    )


def test_a_stopped_copy_hands_the_lease_over_at_once(
    invitations: InvitationsApi,
    mas: MasDouble,
    start_operator: Callable[..., OperatorProcess],
    lease_env: dict[str, str],
) -> None:
    lease = lease_env["MATRIX_INVITE_LEASE_NAME"]
    first = start_operator(**lease_env)
    wait_until("the first copy holds the Lease", lambda: "acquired the Lease" in first.logs(), 30)
    holder = lease_holder(invitations, lease)
    second = start_operator(**lease_env)
    first.stop()  # SIGTERM, as a rolling update does: it gives the Lease up
    stopped_at = time.monotonic()
    wait_until(
        "the second copy holds the Lease",
        lambda: lease_holder(invitations, lease) not in (None, holder),
        LEASE_DURATION,
    )
    handover = time.monotonic() - stopped_at
    print(f"\nhandover after SIGTERM: {handover:.1f} s")
    assert handover < LEASE_DURATION / 2, "the Lease was not given up, it ran out"
    invitations.apply("after", email="after@example.org")
    invitations.wait_for_phase("after", "Sent", timeout=60)
    assert second.returncode is None


def test_a_410_on_a_page_of_the_initial_listing_restarts_the_watch(
    control_plane: ControlPlane,
    invitations: InvitationsApi,
    mas: MasDouble,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
    kube_proxy: ForwardingProxy,
    tmp_path: Path,
) -> None:
    """Kopf 1.45.2's watcher dies on a 410 for a continue token and is never started again.

    The API server answers 410 when a continue token outlived its compaction window (5 min),
    which takes hundreds of thousands of Invitations or a very slow operator to meet for real.
    The proxy makes it exact: the first listing is cut into pages of 2 (the API server may
    always return fewer than asked), and its first continuation is answered 410 Expired.
    """
    for name in ("before-1", "before-2", "before-3"):
        invitations.apply(name, email=f"{name}@example.org")

    def first_listing(method: str, path: str) -> bool:
        return method == "GET" and "/invitations?" in path and "watch=" not in path

    def continuation(method: str, path: str) -> bool:
        return first_listing(method, path) and "continue=" in path

    kube_proxy.rewrite_once(first_listing, lambda path: re.sub(r"limit=\d+", "limit=2", path))
    kube_proxy.answer_once(
        continuation,
        410,
        {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": "The provided continue parameter is too old to display a consistent "
            "list result. You can start a new list without the continue parameter.",
            "reason": "Expired",
            "code": 410,
        },
    )
    operator = start_operator(
        KUBECONFIG=str(kubeconfig_via(kube_proxy, control_plane, tmp_path / "proxied.kubeconfig"))
    )
    for name in ("before-1", "before-2", "before-3"):
        invitations.wait_for_phase(name, "Sent", timeout=60)
    assert [r.path for r in kube_proxy.answered if "continue=" in r.path], "no 410 was answered"
    assert "restarting Kopf to list and watch again (in 2 s)" in operator.logs()

    invitations.apply("after", email="after@example.org")
    invitations.wait_for_phase("after", "Sent", timeout=60)
    assert operator.returncode is None
    assert check_invariants(invitations, mas, smtp).violations == []


def test_a_copy_that_cannot_renew_stops_before_the_lease_passes(
    invitations: InvitationsApi,
    mas: MasDouble,
    lease_env: dict[str, str],
    kube_proxy: ForwardingProxy,
    holder_behind_proxy: Callable[[], tuple[OperatorProcess, str | None, OperatorProcess]],
) -> None:
    lease = lease_env["MATRIX_INVITE_LEASE_NAME"]
    cut_off, holder, standby = holder_behind_proxy()

    # From now on the API server refuses its renewals (as a partition would, for this copy only).
    def renewal(method: str, path: str) -> bool:
        return method == "PUT" and path.startswith(LEASE_PREFIX)

    kube_proxy.answer_once(
        renewal, 503, {"kind": "Status", "status": "Failure", "code": 503}, times=10_000
    )
    cut_at = time.monotonic()
    wait_until("the cut-off copy ends itself", lambda: cut_off.returncode is not None, 30)
    ended = time.monotonic() - cut_at
    assert cut_off.returncode == LOST_LEASE_EXIT_CODE
    # It stopped acting before the Lease could pass: the standby still waits for it to run out.
    assert lease_holder(invitations, lease) == holder
    wait_until(
        "the standby holds the Lease",
        lambda: lease_holder(invitations, lease) not in (None, holder),
        TAKEOVER_BOUND,
    )
    taken = time.monotonic() - cut_at
    print(f"\ncut off: ended itself after {ended:.1f} s, standby took over after {taken:.1f} s")
    assert ended < taken
    invitations.apply("after", email="after@example.org")
    invitations.wait_for_phase("after", "Sent", timeout=60)
    assert standby.returncode is None


def test_a_copy_whose_renewal_hangs_stops_before_the_lease_passes(
    invitations: InvitationsApi,
    mas: MasDouble,
    lease_env: dict[str, str],
    kube_proxy: ForwardingProxy,
    holder_behind_proxy: Callable[[], tuple[OperatorProcess, str | None, OperatorProcess]],
) -> None:
    """The API server takes the connection and never answers: no error ever comes back.

    Each renewal attempt must be cut off at the renew deadline (as client-go's is): waiting
    for the request's own timeout (30 s) would keep the copy acting after the Lease ran out
    (15 s) and the standby began.
    """
    lease = lease_env["MATRIX_INVITE_LEASE_NAME"]
    hung, holder, standby = holder_behind_proxy()

    kube_proxy.hang(lambda method, path: path.startswith(LEASE_PREFIX))
    hung_at = time.monotonic()
    ended: float | None = None
    taken: float | None = None
    deadline = hung_at + 90.0  # longer than the old behaviour (two 30 s timeouts) needs
    while (ended is None or taken is None) and time.monotonic() < deadline:
        if ended is None and hung.returncode is not None:
            ended = time.monotonic() - hung_at
        if taken is None and lease_holder(invitations, lease) not in (None, holder):
            taken = time.monotonic() - hung_at
        time.sleep(0.1)
    print(f"\nhung renewal: ended itself after {ended} s, standby took over after {taken} s")
    assert kube_proxy.held, "no Lease request was held: the test did not hang anything"
    assert ended is not None, "the copy whose renewals hang never ended itself"
    assert taken is not None, "the standby never took over"
    assert ended < taken, "the hung copy was still acting when the standby took over"
    assert hung.returncode == LOST_LEASE_EXIT_CODE
    invitations.apply("after", email="after@example.org")
    invitations.wait_for_phase("after", "Sent", timeout=60)
    assert standby.returncode is None
