"""Where the election Lease lives, as the settings say (the chart sets both variables)."""

from __future__ import annotations

import pytest
from matrix_invite_operator.errors import ConfigurationError
from matrix_invite_operator.leadership import LEASE_DURATION, RENEW_DEADLINE, RETRY_PERIOD
from matrix_invite_operator.settings import Settings


def test_no_lease_name_means_no_election() -> None:
    assert Settings(namespaces="team-a").lease_location() is None


def test_the_lease_defaults_to_the_first_watched_namespace() -> None:
    settings = Settings(namespaces="team-a,team-b", lease_name="mio")
    assert settings.lease_location() == ("team-a", "mio")


def test_an_explicit_lease_namespace_wins() -> None:
    settings = Settings(namespaces="team-a", lease_name="mio", lease_namespace="operators")
    assert settings.lease_location() == ("operators", "mio")


def test_cluster_wide_needs_a_lease_namespace() -> None:
    with pytest.raises(ConfigurationError, match="MATRIX_INVITE_LEASE_NAMESPACE"):
        Settings(namespaces="", lease_name="mio").lease_location()


def test_client_gos_timings_leave_the_holder_time_to_stop_before_the_lease_passes() -> None:
    # The holder stops acting RENEW_DEADLINE after its last renewal; the Lease passes
    # LEASE_DURATION after it at the earliest. The gap must cover the last retry.
    assert (LEASE_DURATION, RENEW_DEADLINE, RETRY_PERIOD) == (15.0, 10.0, 2.0)
    assert LEASE_DURATION - RENEW_DEADLINE > RETRY_PERIOD
