"""The sync pass decides on a listing and a watch cache; both may be older than a handler.

Here the sync pass is handed an Invitation body from before an edit that a handler already
carried out (spec, MAS and status all moved on) and a listing from after it. The two disagree,
which looks like drift; the pass must read afresh and leave everything as the handler left it,
instead of setting the old usage limit back.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path

import pytest
from matrix_invite_operator.backends import TokenState
from matrix_invite_operator.kube import KubeConnection
from matrix_invite_operator.runtime import build_dependencies, close_dependencies
from matrix_invite_operator.settings import Settings
from matrix_invite_operator.sync import SyncReport, sync_invitations

from tests.controlplane.cluster import ControlPlane
from tests.doubles.mas import MasDouble
from tests.integration.conftest import MAS_CLIENT_ID
from tests.integration.harness import InvitationsApi
from tests.integration.outside_admin import OutsideAdmin
from tests.operator_process import OperatorProcess

pytestmark = pytest.mark.integration


def test_a_stale_body_does_not_undo_an_edit(
    control_plane: ControlPlane,
    invitations: InvitationsApi,
    mas: MasDouble,
    operator_env: dict[str, str],
    secrets_dir: Path,
    tmp_path: Path,
) -> None:
    with OperatorProcess(operator_env, tmp_path / "operator.log"):
        invitations.apply("edited", email="edited@example.org")
        stale = invitations.wait_for_phase("edited", "Sent")
    token_id = stale["status"]["tokenId"]

    # What the update handler did while the watch cache still held `stale`:
    invitations.patch_spec("edited", usageLimit=3)
    OutsideAdmin(
        mas.url, MAS_CLIENT_ID, (secrets_dir / "mas-client-secret").read_text()
    ).set_limits(token_id, usage_limit=3, expires_at=_as_time(stale["status"]["expiresAt"]))
    generation = invitations.get("edited")["metadata"]["generation"]  # type: ignore[index]
    invitations.kubectl(
        "patch",
        "invitation",
        "edited",
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"observedGeneration": generation, "usageLimit": 3}}),
    )
    # ...and a listing taken after it: the two disagree, which looks like drift.
    listed = {token_id: _listed(mas, token_id)}

    settings = Settings(
        mas_url=mas.url,
        mas_client_id=MAS_CLIENT_ID,
        mas_client_secret_file=secrets_dir / "mas-client-secret",
        smtp_host="127.0.0.1",
        smtp_port=9,
        mail_rate_per_minute=0,
    )
    connection = KubeConnection.from_kubeconfig(control_plane.kubeconfig_path)

    async def one_pass() -> SyncReport:
        deps = await build_dependencies(settings, kube=connection)
        try:
            report = SyncReport()
            await sync_invitations(deps, [stale], listed, report)
            return report
        finally:
            await close_dependencies(deps)

    report = asyncio.run(one_pass())

    assert report.reconciled == 0
    assert mas.token(token_id)["usage_limit"] == 3  # type: ignore[index]
    assert invitations.status("edited")["usageLimit"] == 3


def _listed(mas: MasDouble, token_id: str) -> TokenState:
    stored = mas.token(token_id)
    assert stored is not None
    assert stored["usage_limit"] == 3
    return TokenState.model_validate(stored)


def _as_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
