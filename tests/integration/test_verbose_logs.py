"""`--verbose` logs every HTTP request, and still no token value reaches a log line.

Run once per backend: Synapse's admin API carries the token in the URL path, which httpx's
request log prints; MAS carries it in bodies, which nothing logs. The shared leak scan
(conftest.assert_no_secret_leaks) runs here with the token values the test saw, since Synapse
forgets a token once it is revoked (deleted) and the teardown scan could not know it any more.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.doubles.mas import MasDouble
from tests.integration.conftest import assert_no_secret_leaks
from tests.integration.harness import InvitationsApi
from tests.operator_process import OperatorProcess

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("backend", ["mas", "synapse"])
def test_verbose_logs_carry_no_token(
    backend: str,
    invitations: InvitationsApi,
    mas: MasDouble,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    operator = start_operator("--verbose")
    invitations.apply("loud", email="loud@example.org")
    body = invitations.wait_for_phase("loud", "Sent", timeout=60)
    token = invitations.secret_token(body["status"]["secretName"])
    # An edit reads and updates the token by its URL; deletion revokes (Synapse: deletes) it.
    invitations.patch_spec("loud", usageLimit=2)
    invitations.wait_for(
        "loud", lambda b: (b.get("status") or {}).get("usageLimit") == 2, timeout=30
    )
    invitations.kubectl("delete", "invitation", "loud", "--wait=false")
    invitations.wait_gone("loud", timeout=30)

    logs = operator.logs()
    requests = [line for line in logs.splitlines() if "HTTP Request:" in line]
    assert len(requests) >= 4, "--verbose did not turn the request log on: nothing was scanned"
    if backend == "synapse":
        by_token = [line for line in requests if "registration_tokens/" in line]
        assert by_token, "no request by the token's URL was logged: nothing was scanned"
        assert all("registration_tokens/<redacted>" in line for line in by_token)
    assert_no_secret_leaks([operator], invitations, mas, {token})
