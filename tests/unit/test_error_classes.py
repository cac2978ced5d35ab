"""Every error the operator raises has a class, and a reason of its own in status."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
from matrix_invite_operator import errors, kube
from matrix_invite_operator.backends import mas, synapse
from matrix_invite_operator.errors import (
    UNEXPECTED,
    OperatorError,
    PermanentError,
    TransientError,
    reason_of,
)
from matrix_invite_operator.metrics import OperatorMetrics

#: Never raised themselves: only grouping what a module raises.
BASES = {OperatorError, errors.BackendError, errors.MailError, errors.KubeError}
ARCHITECTURE = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"


def _raised_classes() -> list[type[OperatorError]]:
    found: set[type[OperatorError]] = set()
    for module in (errors, kube, mas, synapse):
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, OperatorError) and value not in BASES:
                found.add(value)
    return sorted(found, key=lambda c: c.__name__)


def _declared_classes() -> list[type[OperatorError]]:
    """The classes errors.py declares, other than the kinds and the bases."""
    return [
        value
        for _, value in inspect.getmembers(errors, inspect.isclass)
        if issubclass(value, OperatorError)
        and value.__module__ == errors.__name__
        and value not in {*BASES, TransientError, PermanentError}
    ]


@pytest.mark.parametrize("error", _raised_classes(), ids=lambda c: c.__name__)
def test_every_error_is_transient_or_permanent(error: type[OperatorError]) -> None:
    transient, permanent = issubclass(error, TransientError), issubclass(error, PermanentError)
    assert transient != permanent, f"{error.__name__} must be exactly one of the two"


@pytest.mark.parametrize("error", _declared_classes(), ids=lambda c: c.__name__)
def test_every_declared_error_names_its_own_reason(error: type[OperatorError]) -> None:
    # Its own: inherited, MailSetupError would read "MailRejected" (a relay refusing our login
    # is not the recipient's fault), as BackendTlsError once read its raw class name.
    assert "reason" in vars(error), f"{error.__name__} inherits its reason"
    for backend in ("MAS", "Synapse"):
        instance = error.__new__(error)
        Exception.__init__(instance, "what happened")
        reason = reason_of(instance, backend)
        assert reason.isidentifier(), reason
        assert reason[0].isupper(), reason


def test_reasons_tell_the_classes_apart() -> None:
    reasons = [c.reason for c in _declared_classes()]
    assert len(reasons) == len(set(reasons)), sorted(reasons)


@pytest.mark.parametrize(
    ("error", "backend", "reason"),
    [
        (errors.TokenNotFound("gone"), "MAS", "TokenNotFound"),
        (errors.TokenConflict("twice"), "Synapse", "TokenConflict"),
        (errors.KubeNotFound("gone"), "MAS", "KubernetesObjectGone"),
        (errors.KubeRejected("422"), "MAS", "KubernetesRejected"),
        (errors.KubeConflict("409"), "MAS", "KubernetesConflict"),
        (kube._AlreadyExists("/x"), "MAS", "KubernetesConflict"),
        (errors.BackendMisdirected("404"), "MAS", "MasApiNotFound"),
        (errors.BackendClockAhead("skew"), "MAS", "MasClockAhead"),
        (errors.BackendClockAhead("skew"), "Synapse", "SynapseClockAhead"),
        (errors.BackendTlsError("ca"), "MAS", "MasCertificateUntrusted"),
        (errors.BackendUnavailable("down"), "Synapse", "SynapseUnavailable"),
        (errors.MailSetupError("login"), "MAS", "MailSetupRefused"),
        (RuntimeError("a bug"), "MAS", UNEXPECTED),
    ],
)
def test_reasons_per_backend(error: Exception, backend: str, reason: str) -> None:
    assert reason_of(error, backend) == reason


def test_the_architecture_table_lists_each_class_with_its_reason() -> None:
    rows = re.findall(
        r"^\| [^|]+ \| `(\w+)` \| [^|]+ \| `([\w{}]+)`", ARCHITECTURE.read_text("utf-8"), re.M
    )
    assert dict(rows) == {c.__name__: c.reason for c in _declared_classes()}


def test_metrics_label_failures_with_the_status_reasons() -> None:
    metrics = OperatorMetrics()
    metrics.record_reconcile_error(errors.BackendTlsError("untrusted"), "Synapse")
    metrics.record_reconcile_error(RuntimeError("a bug"), "MAS")
    value = metrics.registry.get_sample_value
    labels = {"reason": "SynapseCertificateUntrusted", "kind": "permanent"}
    assert value("matrix_invite_reconcile_errors_total", labels) == 1
    labels = {"reason": UNEXPECTED, "kind": "unexpected"}
    assert value("matrix_invite_reconcile_errors_total", labels) == 1
    for reason in ("MailDeferred", "MailRejected", "MailSetupRefused", UNEXPECTED):
        assert value("matrix_invite_mails_failed_total", {"reason": reason}) == 0


def test_environment_errors_heal_without_an_edit() -> None:
    for error in (
        errors.BackendMisdirected,
        errors.BackendTlsError,
        errors.MailSetupError,
        errors.KubeRejected,
        errors.SecretConflict,
    ):
        assert error.needs_spec_change is False
