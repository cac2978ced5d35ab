"""A tally of the MAS client's requests, fed by its `on_request` observer (as the metrics are).

The operator reports requests to Prometheus only; the contract tests count them here.
"""

from __future__ import annotations

from collections import Counter, defaultdict


class MasRequestCounter:
    """In-memory tally of Admin API requests by (endpoint template, method, outcome)."""

    def __init__(self) -> None:
        self._counts: Counter[tuple[str, str, str]] = Counter()
        self._seconds: defaultdict[tuple[str, str, str], float] = defaultdict(float)

    def record(self, endpoint: str, method: str, outcome: str, seconds: float) -> None:
        key = (endpoint, method, outcome)
        self._counts[key] += 1
        self._seconds[key] += seconds

    def count(
        self, endpoint: str | None = None, method: str | None = None, outcome: str | None = None
    ) -> int:
        """Requests matching every given label (None matches anything)."""
        return sum(
            n
            for (e, m, o), n in self._counts.items()
            if endpoint in (None, e) and method in (None, m) and outcome in (None, o)
        )

    def seconds(self, endpoint: str | None = None, method: str | None = None) -> float:
        """Total time spent in requests matching the given labels."""
        return sum(
            s
            for (e, m, _), s in self._seconds.items()
            if endpoint in (None, e) and method in (None, m)
        )

    def snapshot(self) -> dict[tuple[str, str, str], int]:
        return dict(self._counts)

    def reset(self) -> None:
        self._counts.clear()
        self._seconds.clear()
