"""Every error the operator raises has a class, and a reason of its own in status."""

from __future__ import annotations

import inspect

import pytest
from matrix_invite_operator import errors, kube
from matrix_invite_operator.backends import mas, synapse
from matrix_invite_operator.errors import OperatorError, PermanentError, TransientError
from matrix_invite_operator.reconcile import _problem

#: Never raised themselves: only grouping what a module raises.
BASES = {
    OperatorError,
    errors.BackendError,
    errors.MailError,
    errors.KubeError,
    errors.AuthentikError,
}


def _raised_classes() -> list[type[OperatorError]]:
    found: set[type[OperatorError]] = set()
    for module in (errors, kube, mas, synapse):
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, OperatorError) and value not in BASES:
                found.add(value)
    return sorted(found, key=lambda c: c.__name__)


@pytest.mark.parametrize("error", _raised_classes(), ids=lambda c: c.__name__)
def test_every_error_is_transient_or_permanent(error: type[OperatorError]) -> None:
    transient, permanent = issubclass(error, TransientError), issubclass(error, PermanentError)
    assert transient != permanent, f"{error.__name__} must be exactly one of the two"


@pytest.mark.parametrize("error", _raised_classes(), ids=lambda c: c.__name__)
def test_every_error_names_a_reason(error: type[OperatorError]) -> None:
    instance = error.__new__(error)
    Exception.__init__(instance, "what happened")
    reason = _problem(instance, "MAS").reason
    assert reason.isidentifier()
    assert reason[0].isupper(), reason


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (errors.TokenNotFound("gone"), "TokenNotFound"),
        (errors.TokenConflict("twice"), "TokenConflict"),
        (errors.KubeNotFound("gone"), "KubernetesObjectGone"),
        (errors.KubeRejected("422"), "KubernetesRejected"),
        (errors.KubeConflict("409"), "KubernetesConflict"),
        (errors.BackendMisdirected("404"), "MasApiNotFound"),
        (errors.BackendClockAhead("skew"), "MasClockAhead"),
    ],
)
def test_the_newly_classified_reasons(error: OperatorError, reason: str) -> None:
    assert _problem(error, "MAS").reason == reason


def test_environment_errors_heal_without_an_edit() -> None:
    for error in (errors.BackendMisdirected, errors.KubeRejected, errors.SecretConflict):
        assert error.needs_spec_change is False
