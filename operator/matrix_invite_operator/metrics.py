"""Prometheus metrics: what they are called, how they are counted, and the /metrics endpoint.

One `OperatorMetrics` per operator, on its own `CollectorRegistry` (never the process-global
default registry), built at startup and kept in Kopf's memo. Counters are fed by callbacks: the
MAS client's `on_request`, a mailer wrapper, and the Kopf handlers' error mapping. Gauges that
describe state (Invitations by phase, the last successful status sync) are computed at scrape
time from the objects the operator keeps anyway, so they can never go stale. Every name and label
here is documented in docs/metrics.md; a test checks that each documented metric is served.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .errors import (
    UNEXPECTED,
    MailRejectedError,
    MailSetupError,
    MailTemporaryError,
    MailThrottled,
    PermanentError,
    TransientError,
    reason_of,
)
from .models import Phase

if TYPE_CHECKING:
    from pydantic import SecretStr

    from .backends import TokenState
    from .ports import Invitation, InvitationMailer
    from .sign_up import SignUpFacts
    from .sync import WatchedInvitation

PREFIX = "matrix_invite"

# MAS answers in milliseconds when healthy; the long tail is the client's own timeout (10 s).
MAS_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

Registry = Mapping[tuple[str, str], "WatchedInvitation"]

#: Why a mail failed, in the words status uses (`errors.reason_of`); waiting for a slot is none.
MAIL_FAILURE_REASONS = (
    MailTemporaryError.reason,
    MailRejectedError.reason,
    MailSetupError.reason,
    UNEXPECTED,
)

ONBOARDING_OUTCOMES = {
    "account_lookup": ("found", "not_found", "failed"),
    "join": ("joined", "failed"),
    "invite": ("invited", "joined", "failed"),
    "personal_session": ("minted", "revoked", "revoke_failed"),
}


class _StateCollector(Collector):
    """Invitations by phase and the last successful sync, read at scrape time."""

    def __init__(
        self, invitations: Callable[[], Registry | None], last_sync: Callable[[], float | None]
    ) -> None:
        self._invitations = invitations
        self._last_sync = last_sync

    def collect(self) -> Iterable[GaugeMetricFamily]:
        by_phase = GaugeMetricFamily(
            f"{PREFIX}_invitations",
            "Invitations the operator watches, by status phase (Unknown: not reconciled yet)",
            labels=["phase"],
        )
        counts = dict.fromkeys([*(p.value for p in Phase), "Unknown"], 0)
        registry = self._invitations()
        # list() copies the values in one step, so a watch event arriving meanwhile on the
        # event loop cannot change the dict under this (scrape) thread's iteration.
        for watched in list(registry.values()) if registry is not None else []:
            phase = watched.phase
            counts[phase if phase in counts else "Unknown"] += 1
        for phase, count in counts.items():
            by_phase.add_metric([phase], count)
        yield by_phase

        synced = GaugeMetricFamily(
            f"{PREFIX}_last_successful_sync_timestamp_seconds",
            "Unix time at which the status sync last listed MAS and updated every Invitation "
            "(0: not yet)",
        )
        synced.add_metric([], self._last_sync() or 0.0)
        yield synced


class _SignUpCollector(Collector):
    """Whether MAS lets people sign up without a token, read at scrape time."""

    def __init__(self, facts: Callable[[], SignUpFacts | None]) -> None:
        self._facts = facts

    def collect(self) -> Iterable[GaugeMetricFamily]:
        facts = self._facts()
        if facts is None:  # MAS's site-config not read (yet), or the Synapse backend
            return
        gauge = GaugeMetricFamily(
            f"{PREFIX}_registration_not_token_gated",
            "1 when MAS (password sign-up or an enabled upstream provider) lets people sign up "
            "without a registration token, so invitations protect nothing; else 0",
        )
        gauge.add_metric([], 1.0 if facts.unprotected else 0.0)
        yield gauge


class OperatorMetrics:
    """The operator's metrics on a private registry; pass its methods as callbacks."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._invitations: Callable[[], Registry | None] = lambda: None
        self._last_sync: Callable[[], float | None] = lambda: None
        self._sign_up: Callable[[], SignUpFacts | None] = lambda: None
        self.mas_requests = Counter(
            f"{PREFIX}_mas_requests",
            "MAS Admin API requests, by endpoint template, HTTP method and outcome",
            ["endpoint", "method", "outcome"],
            registry=self.registry,
        )
        self.mas_request_duration = Histogram(
            f"{PREFIX}_mas_request_duration_seconds",
            "Time from sending a MAS Admin API request to its answer (or failure)",
            ["endpoint", "method"],
            buckets=MAS_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.mails_sent = Counter(
            f"{PREFIX}_mails_sent",
            "Invitation mails accepted by the SMTP server",
            registry=self.registry,
        )
        self.mails_failed = Counter(
            f"{PREFIX}_mails_failed",
            "Invitation mails that could not be sent, by the reason status shows "
            f"({', '.join(MAIL_FAILURE_REASONS)})",
            ["reason"],
            registry=self.registry,
        )
        for reason in MAIL_FAILURE_REASONS:  # present at 0 from the start
            self.mails_failed.labels(reason=reason)
        self.reconcile_errors = Counter(
            f"{PREFIX}_reconcile_errors",
            "Failed reconcile or revoke attempts, by the reason status shows and whether "
            "retrying can help",
            ["reason", "kind"],
            registry=self.registry,
        )
        self.onboarding = Counter(
            f"{PREFIX}_onboarding_actions",
            "After sign-up: account lookups (found, not_found, failed), joins and invites "
            "(joined, invited, failed), personal sessions (minted, revoked, revoke_failed)",
            ["action", "outcome"],
            registry=self.registry,
        )
        for action, outcomes in ONBOARDING_OUTCOMES.items():  # present at 0 from the start
            for outcome in outcomes:
                self.onboarding.labels(action=action, outcome=outcome)
        self.registry.register(
            _StateCollector(lambda: self._invitations(), lambda: self._last_sync())
        )
        self.registry.register(_SignUpCollector(lambda: self._sign_up()))

    def observe_state(
        self, invitations: Callable[[], Registry | None], last_sync: Callable[[], float | None]
    ) -> None:
        """Where the scrape-time gauges read from: the watched Invitations, the sync loop."""
        self._invitations = invitations
        self._last_sync = last_sync

    def observe_sign_up(self, facts: Callable[[], SignUpFacts | None]) -> None:
        """Where the registration gauge reads from: MAS's site-config as last read."""
        self._sign_up = facts

    def record_mas_request(self, endpoint: str, method: str, outcome: str, seconds: float) -> None:
        """`MasAdminClient(on_request=...)`: called once per Admin API request."""
        self.mas_requests.labels(endpoint=endpoint, method=method, outcome=outcome).inc()
        self.mas_request_duration.labels(endpoint=endpoint, method=method).observe(seconds)

    def record_onboarding(self, action: str, outcome: str) -> None:
        """`onboarding.Onboarding(observe=...)`: one lookup, join, invite or session."""
        self.onboarding.labels(action=action, outcome=outcome).inc()

    def record_reconcile_error(self, error: BaseException, backend: str) -> None:
        """One failed attempt, labelled with the reason status shows for it (`errors.reason_of`)."""
        kind = (
            "permanent"
            if isinstance(error, PermanentError)
            else "transient"
            if isinstance(error, TransientError)
            else "unexpected"
        )
        self.reconcile_errors.labels(reason=reason_of(error, backend), kind=kind).inc()

    def counting_mailer(self, mailer: InvitationMailer) -> InvitationMailer:
        return _CountingMailer(mailer, self)

    def serve(self, address: str, port: int) -> WSGIServer:
        """Serve /metrics in a daemon thread; `shutdown()` the returned server to stop."""
        server, _thread = start_http_server(port, addr=address, registry=self.registry)
        return server


class _CountingMailer:
    """Counts what the wrapped mailer did; waiting for a mail slot is neither sent nor failed."""

    def __init__(self, inner: InvitationMailer, metrics: OperatorMetrics) -> None:
        self._inner = inner
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:  # e.g. `throttle`, for callers that inspect it
        return getattr(self._inner, name)

    async def send_invitation(
        self, invitation: Invitation, *, token: SecretStr, token_state: TokenState
    ) -> None:
        try:
            await self._inner.send_invitation(invitation, token=token, token_state=token_state)
        except MailThrottled:
            raise
        except Exception as exc:
            self._metrics.mails_failed.labels(reason=reason_of(exc)).inc()
            raise
        self._metrics.mails_sent.inc()
