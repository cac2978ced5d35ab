"""Sync cost: what one status-sync pass costs MAS and Kubernetes for N Invitations.

Run from the repository root::

    .venv/bin/python bench/sync_cost.py                    # N = 1, 100, 1000
    .venv/bin/python bench/sync_cost.py --sizes 1,100,1000,10000

For each N it seeds the MAS double (`tests/doubles/mas.py`, real HTTP, checked against MAS's
OpenAPI spec) with N registration tokens, builds the N Invitation bodies the operator would have
written for them (phase Sent, tokenId, mail recorded, `observedGeneration`, `lastSyncedAt` fresh),
and runs `StatusSync.run_pass()` with the operator's real `MasTokenBackend` (page size 100,
OAuth client credentials) over HTTP. Kubernetes is `tests/doubles/kube_recorder.py`, which
records every request the operator's own `KubeApi` sends (status patches, Events); after each
pass the recorded status patches are merged into the Invitation bodies, as the API server would
store them and the watch would bring them back to the operator. Nothing is monkeypatched.

Columns:

- ``list``: Admin API list requests in the pass (pages of 100 tokens);
- ``token``: OAuth access-token requests in the pass (a fresh process has no token yet; later
  passes reuse it until it is about to expire);
- ``discovery``: OpenID discovery requests (once per operator process, not per pass);
- ``bound``: ceil(N / 100) + 1, which ``list + token`` must not exceed;
- ``warm``: MAS requests of the next pass, with the access token cached;
- ``kube writes``: Kubernetes requests of the pass (0 when nothing changed in MAS);
- ``1 used``: status patches + Events of a third pass after one registration with one token
  (1 + 1: that Invitation becomes Accepted, nothing else is touched);
- ``seconds``: wall time of the (first) pass; the MAS double serves from a thread of this
  process and competes for the GIL, so this is an upper bound, not MAS's latency.

Exits non-zero if a pass breaks the bound, writes to Kubernetes for no change, misses or
over-reports the one change, or hands an Invitation to the reconcile steps (which would mean the
bodies do not match what the operator writes).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import math
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `tests` (the doubles) importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from matrix_invite_operator.backends import TokenState
from matrix_invite_operator.backends.mas import MasAdminClient, MasTokenBackend
from matrix_invite_operator.backends.oauth import ClientCredentialsAuth
from matrix_invite_operator.formats import rfc3339
from matrix_invite_operator.kube import KubeApi, KubeEvents
from matrix_invite_operator.models import (
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    InvitationSpec,
    InvitationStatus,
)
from matrix_invite_operator.ports import Invitation, secret_name_for
from matrix_invite_operator.runtime import Dependencies
from matrix_invite_operator.settings import Settings
from matrix_invite_operator.status import compute_status
from matrix_invite_operator.sync import Registry, StatusSync, SyncReport, WatchedInvitation
from pydantic import SecretStr

from tests.doubles.kube_recorder import KubeRecorder, KubeRequest
from tests.doubles.mas import DISCOVERY_PATH, OAUTH_TOKEN_PATH, TOKENS_PATH, MasDouble

PAGE_SIZE = 100
DEFAULT_SIZES = (1, 100, 1000)
NAMESPACE = "bench"
CLIENT_ID = "01J44RKQYM4G3TNVANTMTDYTX6"
CLIENT_SECRET = "mas-client-secret-for-benchmarks-only"  # noqa: S105 - the double's, not real


def bound(n: int) -> int:
    """MAS requests one pass may make: every page of the token list, plus one access token."""
    return math.ceil(n / PAGE_SIZE) + 1


@dataclass(frozen=True)
class PassCost:
    """MAS and Kubernetes traffic of one sync pass."""

    n: int
    list_requests: int
    token_requests: int
    discovery_requests: int
    other_mas_requests: int
    kube_requests: int
    status_patches: int
    events: int
    seconds: float
    report: SyncReport

    @property
    def bound(self) -> int:
        return bound(self.n)

    @property
    def mas_requests(self) -> int:
        """Per-pass MAS requests: what the bound limits (discovery happens once per process)."""
        return self.list_requests + self.token_requests + self.other_mas_requests


class NoMail:
    """The sync pass never mails; if it tried, the measurement would be wrong: fail loudly."""

    async def send_invitation(
        self,
        invitation: Invitation,
        *,
        token: SecretStr,
        token_state: TokenState,
        enrollment_url: SecretStr | None = None,
    ) -> None:
        raise AssertionError(f"the sync pass tried to mail {invitation.name}")


def invitation_body(
    index: int, token: TokenState, created: dt.datetime, now: dt.datetime
) -> dict[str, Any]:
    """The Invitation as the API server holds it after the operator mailed `token` for it."""
    name = f"invite-{index:05d}"
    email = f"user{index}@example.org"
    spec = {"email": email, "usageLimit": token.usage_limit, "expiresAt": rfc3339(token.expires_at)}
    recorded = InvitationStatus(
        secret_name=secret_name_for(name),
        token_id=token.id,
        issued_to=email,
        mail_sent_at=rfc3339(created),
        mail_recipient=email,
        mailed_token_id=token.id,
        mails_sent=1,
        resend_handled="spec=;annotation=",
    )
    status = compute_status(
        recorded,
        spec=InvitationSpec.model_validate(spec),
        generation=1,
        token=token,
        now=now,
    )
    status.last_synced_at = now
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "uid": f"00000000-0000-4000-8000-{index:012d}",
            "generation": 1,
            "creationTimestamp": rfc3339(created),
        },
        "spec": spec,
        # A merge patch with null deletes a field: the API server never holds nulls.
        "status": status.model_dump(mode="json", by_alias=True, exclude_none=True),
    }


class SyncBench:
    """One MAS double, one Kubernetes recorder, and fresh operator clients per measurement."""

    def __init__(self, mas: MasDouble, kube: KubeRecorder, client_id: str, secret: str) -> None:
        self.mas = mas
        self.kube = kube
        self._client_id = client_id
        self._secret = SecretStr(secret)
        self._clients: list[httpx.AsyncClient] = []
        self.sync: StatusSync | None = None
        self.token_ids: list[str] = []

    def _backend(self) -> MasTokenBackend:
        # As `providers.mas.build` wires it: client credentials, discovery, page size 100.
        http = httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=5.0))
        self._clients.append(http)
        auth = ClientCredentialsAuth(self._client_id, self._secret, issuer=self.mas.url)
        return MasTokenBackend(MasAdminClient(http, self.mas.url, auth=auth), page_size=PAGE_SIZE)

    def admin(self) -> MasTokenBackend:
        """A client of MAS's Admin API of its own, for changes behind the operator's back."""
        return self._backend()

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()
        self._clients.clear()

    async def seed(self, n: int) -> None:
        """N tokens in MAS and the N Invitations that match them; a fresh operator to sync."""
        self.mas.delete_all()
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        expires = now + dt.timedelta(days=7)
        for _ in range(n):
            self.mas.add_token(usage_limit=1, expires_at=expires)
        # The TokenStates exactly as the operator parses them from MAS (setup, not measured).
        tokens = [token async for token in self._backend().list_all()]
        if len(tokens) != n:
            raise AssertionError(f"seeded {n} tokens, MAS lists {len(tokens)}")
        created = now - dt.timedelta(hours=1)
        registry: Registry = {}
        for index, token in enumerate(tokens):
            body = invitation_body(index, token, created, now)
            self.kube.objects[invitation_path(body)] = body
            registry[(NAMESPACE, body["metadata"]["name"])] = WatchedInvitation.from_body(body)
        self.token_ids = [token.id for token in tokens]
        kube_http = httpx.AsyncClient(base_url=self.kube.url, timeout=30.0)
        self._clients.append(kube_http)
        kube_api = KubeApi(kube_http)
        deps = Dependencies(
            settings=Settings(),
            backend=self._backend(),
            kube=kube_api,
            mailer=NoMail(),
            events=KubeEvents(kube_api),
        )
        self.sync = StatusSync(deps, registry)

    async def run_pass(self) -> PassCost:
        """One full pass (list MAS, update what changed), with its traffic."""
        if self.sync is None:
            raise RuntimeError("seed first")
        return await self._measure(self.sync.run_pass)

    async def run_recent_pass(self) -> PassCost:
        """One acceptance pass (the newest tokens only), with its traffic."""
        if self.sync is None:
            raise RuntimeError("seed first")
        return await self._measure(self.sync.run_recent_pass)

    async def _measure(self, run: Callable[[], Awaitable[SyncReport]]) -> PassCost:
        self.mas.reset_request_log()
        self.kube.reset()
        started = time.perf_counter()
        report = await run()
        seconds = time.perf_counter() - started
        log = self.mas.request_log()
        listed = sum(1 for r in log if r.method == "GET" and r.path_template == TOKENS_PATH)
        token = sum(1 for r in log if r.path_template == OAUTH_TOKEN_PATH)
        discovery = sum(1 for r in log if r.path_template == DISCOVERY_PATH)
        kube = self.kube.requests()
        self._deliver(kube)
        return PassCost(
            n=len(self.token_ids),
            list_requests=listed,
            token_requests=token,
            discovery_requests=discovery,
            other_mas_requests=len(log) - listed - token - discovery,
            kube_requests=len(kube),
            status_patches=sum(1 for r in kube if r.is_status_patch),
            events=sum(1 for r in kube if r.is_event),
            seconds=seconds,
            report=report,
        )

    def _deliver(self, requests: Sequence[KubeRequest]) -> None:
        """What the API server and the watch would do: the patched status comes back."""
        if self.sync is None:
            return
        for request in requests:
            if not request.is_status_patch:
                continue
            *_, namespace, _, name, _ = request.path.split("/")
            key = (namespace, name)
            stored = self.kube.objects[request.path.removesuffix("/status")]
            patched = merge_patch(stored, request.body)
            self.kube.objects[invitation_path(patched)] = patched
            self.sync.registry[key] = WatchedInvitation.from_body(patched)


def invitation_path(body: dict[str, Any]) -> str:
    meta = body["metadata"]
    return f"/apis/{GROUP}/{VERSION}/namespaces/{meta['namespace']}/{PLURAL}/{meta['name']}"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge key by key, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


HEADER = (
    f"{'N':>6} {'list':>5} {'token':>5} {'discovery':>9} {'MAS/pass':>8} {'bound':>5} "
    f"{'warm':>5} {'kube writes':>11} {'1 used':>7} {'seconds':>8}"
)


def row(cold: PassCost, warm: PassCost, changed: PassCost) -> str:
    return (
        f"{cold.n:>6} {cold.list_requests:>5} {cold.token_requests:>5} "
        f"{cold.discovery_requests:>9} {cold.mas_requests:>8} {cold.bound:>5} "
        f"{warm.mas_requests + warm.discovery_requests:>5} {cold.kube_requests:>11} "
        f"{f'{changed.status_patches}+{changed.events}':>7} {cold.seconds:>8.3f}"
    )


def problems(cost: PassCost, *, changed: int = 0) -> list[str]:
    found = []
    if cost.mas_requests > cost.bound:
        found.append(f"N={cost.n}: {cost.mas_requests} MAS requests > bound {cost.bound}")
    # Each changed Invitation: a fresh read, one status patch and one Event (it became Accepted).
    if (cost.status_patches, cost.events, cost.kube_requests) != (changed, changed, 3 * changed):
        found.append(
            f"N={cost.n}: {cost.kube_requests} Kubernetes requests ({cost.status_patches} "
            f"status patches, {cost.events} Events) for {changed} changed tokens"
        )
    if cost.report.reconciled or cost.report.failed or cost.report.listed != cost.n:
        found.append(f"N={cost.n}: unexpected pass report {cost.report}")
    return found


async def measure(sizes: Sequence[int]) -> int:
    failures: list[str] = []
    with (
        MasDouble(client_id=CLIENT_ID, client_secret=CLIENT_SECRET) as mas,
        KubeRecorder() as kube,
    ):
        print(HEADER)
        for n in sizes:
            bench = SyncBench(mas, kube, CLIENT_ID, CLIENT_SECRET)
            try:
                await bench.seed(n)
                cold = await bench.run_pass()
                warm = await bench.run_pass()
                mas.simulate_registration(bench.token_ids[0])
                changed = await bench.run_pass()
            finally:
                await bench.aclose()
            print(row(cold, warm, changed), flush=True)
            failures += problems(cold) + problems(warm) + problems(changed, changed=1)
        failures += [f"MAS double: {v}" for v in mas.spec_violations + mas.request_violations]
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    return 1 if failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--sizes",
        default=",".join(map(str, DEFAULT_SIZES)),
        help="comma-separated Invitation counts (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    sizes = [int(part) for part in args.sizes.split(",") if part.strip()]
    return asyncio.run(measure(sizes))


if __name__ == "__main__":
    sys.exit(main())
