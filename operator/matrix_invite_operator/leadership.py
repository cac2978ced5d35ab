"""Leader election by a `coordination.k8s.io/v1` Lease: at most one copy of the operator acts.

The mechanism and timings are client-go's (`tools/leaderelection`): a candidate takes the Lease
when it is free or its holder let `leaseDurationSeconds` pass without renewing; the holder renews
every `RETRY_PERIOD`, and if it cannot renew for `RENEW_DEADLINE` it stops acting (the process
ends, as client-go's callers do), before the Lease can pass to another copy. Every write carries
the `resourceVersion` it was decided from, so two candidates racing for a free Lease cannot both
win: the API server answers the loser 409.

The Lease is read and written through `LeaseStore`, which `kube.KubeApi` is: the same calls,
identity and error mapping as every other request of ours. `__main__` gives it a connection pool
of its own, so that renewals never queue behind a burst of reconciles.

No Kopf here: `__main__` starts Kopf only once `acquire` returned, so a standby runs no handler
and writes nothing but its attempts on the Lease. The standby still answers the liveness probe
(`serve_standby_probe`): waiting is healthy.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import KubeError
from .formats import parse_rfc3339

logger = logging.getLogger(__name__)

LEASE_DURATION = 15.0
RENEW_DEADLINE = 10.0
RETRY_PERIOD = 2.0


def default_identity() -> str:
    """The pod's name (HOSTNAME in Kubernetes) plus a random part, as client-go's callers do:
    a restarted container is a new candidate, not the old holder coming back."""
    return f"{os.environ.get('HOSTNAME', 'matrix-invite-operator')}_{uuid.uuid4().hex[:8]}"


def _micro_time(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseStore(Protocol):
    """The Lease calls (`kube.KubeApi`); failures raise our `KubeError`s."""

    async def read_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Lease, or None when there is none."""
        ...

    async def create_lease(self, namespace: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """The Lease as created, or None when it exists already."""
        ...

    async def replace_lease(
        self, namespace: str, name: str, body: dict[str, Any]
    ) -> dict[str, Any] | None:
        """The Lease as written, or None when it changed since `body`'s resourceVersion."""
        ...


@dataclass
class _Observed:
    """The Lease as last read, and when we read it by our own monotonic clock.

    Expiry is judged by our clock from the moment we saw the record change, never by comparing
    the holder's `renewTime` with our wall clock: clock skew between nodes cannot hand out the
    Lease early (client-go does the same).
    """

    record: dict[str, Any]
    resource_version: str | None
    changed_at: float


class LeaseElector:
    """Acquire and keep one Lease through the Kubernetes API."""

    def __init__(
        self,
        store: LeaseStore,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_duration: float = LEASE_DURATION,
        renew_deadline: float = RENEW_DEADLINE,
        retry_period: float = RETRY_PERIOD,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not lease_duration > renew_deadline > retry_period > 0:
            raise ValueError("need lease duration > renew deadline > retry period > 0")
        self._store = store
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self._clock = clock
        self._observed: _Observed | None = None
        self.acquired_at: float | None = None

    @property
    def holder(self) -> str | None:
        """Who held the Lease when we last read or wrote it."""
        if self._observed is None:
            return None
        holder = self._observed.record.get("holderIdentity")
        return str(holder) if holder else None

    async def acquire(self) -> None:
        """Wait until this candidate holds the Lease."""
        logger.info(
            "waiting for the Lease %s/%s as %s (another copy may be active)",
            self.namespace,
            self.name,
            self.identity,
        )
        while True:
            try:
                if await self.try_acquire_or_renew():
                    break
            except KubeError as exc:
                logger.warning("could not read or take the Lease: %s", exc)
            await asyncio.sleep(self.retry_period)
        self.acquired_at = self._clock()
        logger.info("acquired the Lease %s/%s as %s", self.namespace, self.name, self.identity)

    async def keep(self) -> None:
        """Renew every `retry_period` until `renew_deadline` passed since the last renewal; then
        return (the caller stops acting).

        Each attempt is cut off at that deadline, as client-go's context cuts off its
        `tryAcquireOrRenew`: an API server that takes the connection and never answers must not
        hold us past the deadline (the request timeouts are longer than the Lease).
        """
        last_renewed = self._clock()
        while True:
            await asyncio.sleep(min(self.retry_period, self._left(last_renewed)))
            attempt = asyncio.timeout(self._left(last_renewed))
            try:
                async with attempt:
                    renewed = await self.try_acquire_or_renew()
            except (KubeError, TimeoutError) as exc:
                if attempt.expired():
                    logger.warning("the Lease renewal got no answer before the renew deadline")
                else:
                    logger.warning("could not renew the Lease: %s", exc)
                renewed = False
            if renewed:
                last_renewed = self._clock()
            elif self.holder not in (None, self.identity):
                logger.error("lost the Lease %s/%s to %s", self.namespace, self.name, self.holder)
                return
            elif self._left(last_renewed) <= 0:
                logger.error(
                    "lost the Lease %s/%s: not renewed for %.0f s",
                    self.namespace,
                    self.name,
                    self._clock() - last_renewed,
                )
                return

    def _left(self, last_renewed: float) -> float:
        """Seconds until the renew deadline counted from `last_renewed` (never negative)."""
        return max(0.0, last_renewed + self.renew_deadline - self._clock())

    async def release(self) -> None:
        """Give the Lease up at a clean shutdown, so that a standby takes over at once."""
        if self._observed is None or self._observed.record.get("holderIdentity") != self.identity:
            return
        record = {**self._observed.record, "holderIdentity": None, "leaseDurationSeconds": 1}
        try:
            await self._write(record, self._observed.resource_version)
        except KubeError as exc:
            logger.warning("could not release the Lease: %s", exc)

    async def try_acquire_or_renew(self) -> bool:
        """One attempt, as client-go's `tryAcquireOrRenew`: True if we hold the Lease now."""
        now = dt.datetime.now(dt.UTC)
        current = await self._read()
        if current is None:
            record = self._record(now, acquired=now, transitions=0)
            return await self._create(record)
        spec: dict[str, Any] = current.get("spec") or {}
        version = current["metadata"].get("resourceVersion")
        observed = self._observed
        if observed is None or observed.record != spec:
            self._observed = _Observed(spec, version, self._clock())
        else:
            observed.resource_version = version
        holder = spec.get("holderIdentity")
        held_by_us = holder == self.identity
        if holder and not held_by_us and not self._expired(spec):
            return False
        transitions = int(spec.get("leaseTransitions") or 0)
        if held_by_us:
            acquired = parse_rfc3339(spec.get("acquireTime") or None) or now
        else:
            acquired, transitions = now, transitions + 1
        record = self._record(now, acquired=acquired, transitions=transitions)
        return await self._write(record, version)

    def _expired(self, spec: dict[str, Any]) -> bool:
        assert self._observed is not None
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
        return self._observed.changed_at + duration <= self._clock()

    def _record(
        self, now: dt.datetime, *, acquired: dt.datetime, transitions: int
    ) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.lease_duration),
            "acquireTime": _micro_time(acquired),
            "renewTime": _micro_time(now),
            "leaseTransitions": transitions,
        }

    async def _read(self) -> dict[str, Any] | None:
        return await self._store.read_lease(self.namespace, self.name)

    async def _create(self, record: dict[str, Any]) -> bool:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": record,
        }
        created = await self._store.create_lease(self.namespace, body)
        if created is None:
            return False  # another candidate created it first
        self._remember(created)
        return True

    async def _write(self, record: dict[str, Any], version: str | None) -> bool:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "resourceVersion": version,
            },
            "spec": record,
        }
        written = await self._store.replace_lease(self.namespace, self.name, body)
        if written is None:
            return False  # changed since we read it: someone else renewed or took it
        self._remember(written)
        return True

    def _remember(self, lease: dict[str, Any]) -> None:
        self._observed = _Observed(
            lease.get("spec") or {}, lease["metadata"].get("resourceVersion"), self._clock()
        )


async def serve_standby_probe(host: str, port: int) -> asyncio.Server:
    """Answer the liveness probe while waiting for the Lease: a standby is healthy.

    Kopf serves the probe once this copy leads; the caller closes this server first.
    """

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            body = b'{"standby": true}'
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(answer, host, port, reuse_address=True)
