"""How Flux would judge Invitations: kstatus (the real Go library) and the CEL health checks.

- :func:`kstatus_verdicts` pipes a Kubernetes List (``kubectl get invitations -o json``) through
  the kstatus checker built from ``tests/kstatus`` (``sigs.k8s.io/cli-utils/pkg/kstatus/status``,
  what Flux's ``wait: true`` and ``healthChecks`` use) and returns its verdict per object.
- :func:`flux_cel_verdict` evaluates the ``healthCheckExprs`` from FACTS.md with cel-python, in the
  order of Flux's ``StatusEvaluator`` (RFC 0009): ``observedGeneration`` ≠ ``generation`` →
  InProgress; then ``failed``; then ``current``; neither true → InProgress. An expression that
  cannot be evaluated (no ``status`` yet) is an error in Flux, which leaves the object Unknown,
  not ready: reported here as ``Unknown`` with the error text.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import celpy
from celpy.adapter import json_to_cel
from celpy.celtypes import BoolType
from celpy.evaluation import CELEvalError

from tests.controlplane.build import ensure_kstatus

# Verbatim from FACTS.md, "Status that Flux can trust (kstatus)".
CEL_CURRENT = (
    "status.observedGeneration == metadata.generation && "
    "status.conditions.exists(c, c.type == 'Ready' && c.status == 'True')"
)
CEL_FAILED = "status.conditions.exists(c, c.type == 'Stalled' && c.status == 'True')"

KSTATUS_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class Verdict:
    status: str  # Current, InProgress, Failed, Terminating, ... or Unknown for a CEL error
    message: str


def kstatus_verdicts(list_json: str, binary: Path | None = None) -> dict[str, Verdict]:
    """kstatus's verdict for every object in a List, by object name."""
    result = subprocess.run(
        [str(binary or ensure_kstatus())],
        input=list_json,
        capture_output=True,
        text=True,
        timeout=KSTATUS_TIMEOUT_SECONDS,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"kstatus checker failed ({result.returncode}): {result.stderr}")
    verdicts: dict[str, Verdict] = {}
    for line in result.stdout.splitlines():
        row = json.loads(line)
        if row.get("error"):
            raise AssertionError(f"kstatus cannot judge {row['name']}: {row['error']}")
        verdicts[row["name"]] = Verdict(row["status"], row["message"])
    return verdicts


class FluxCel:
    """The two expressions, compiled once."""

    def __init__(self, current: str = CEL_CURRENT, failed: str = CEL_FAILED) -> None:
        env = celpy.Environment()
        self._current = env.program(env.compile(current))
        self._failed = env.program(env.compile(failed))

    @staticmethod
    def _evaluate(program: celpy.Runner, body: dict[str, Any]) -> bool | str:
        """True/False, or the evaluation error's text."""
        activation = {key: json_to_cel(value) for key, value in body.items()}
        try:
            value = program.evaluate(activation)
        except CELEvalError as exc:
            return _error_text(exc)
        if isinstance(value, CELEvalError):  # some versions return the error instead
            return _error_text(value)
        if not isinstance(value, BoolType):
            return f"CEL expression gave {type(value).__name__}, not a bool"
        return bool(value)

    def current(self, body: dict[str, Any]) -> bool | str:
        return self._evaluate(self._current, body)

    def failed(self, body: dict[str, Any]) -> bool | str:
        return self._evaluate(self._failed, body)

    def verdict(self, body: dict[str, Any]) -> Verdict:
        status = body.get("status") or {}
        generation = body["metadata"].get("generation")
        observed = status.get("observedGeneration")
        if observed is not None and generation is not None and observed != generation:
            return Verdict("InProgress", f"observedGeneration {observed} ≠ generation {generation}")
        for outcome, check in (("Failed", self.failed), ("Current", self.current)):
            value = check(body)
            if isinstance(value, str):
                return Verdict("Unknown", value)
            if value:
                return Verdict(outcome, f"the {outcome.lower()} expression is true")
        return Verdict("InProgress", "neither the failed nor the current expression is true")


def _error_text(error: CELEvalError) -> str:
    text = str(error.args[0]) if error.args else str(error)
    # cel-python appends a dump of the whole activation: keep the sentence only.
    return "CEL evaluation error: " + text.split(" (in activation", 1)[0]
