"""The sync pass decides on a listing and a watch cache; both may be older than a handler.

Here the sync pass is handed an Invitation body from before an edit that a handler already
carried out (spec, MAS and status all moved on) and a listing from after it. The two disagree,
which looks like drift; the pass must read afresh and leave everything as the handler left it,
instead of setting the old usage limit back. Likewise an expiry wake-up handed a body and a
listing from before an edit of the expiry must not write Expired over the extended token, and a
pass must skip an Invitation whose lock a handler holds instead of waiting for it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from matrix_invite_operator.backends import TokenState
from matrix_invite_operator.formats import rfc3339
from matrix_invite_operator.kube_identity import KubeLogin
from matrix_invite_operator.ports import Invitation
from matrix_invite_operator.runtime import Dependencies, build_dependencies, close_dependencies
from matrix_invite_operator.settings import Settings
from matrix_invite_operator.sync import SyncReport, sync_invitations

from tests.controlplane.cluster import ControlPlane
from tests.doubles.mas import MasDouble
from tests.integration.conftest import MAS_CLIENT_ID
from tests.integration.harness import Body, InvitationsApi
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
    stale = sent_by_the_operator(invitations, operator_env, tmp_path, "edited")
    token_id = stale["status"]["tokenId"]

    # What the update handler did while the watch cache still held `stale`:
    expires = _as_time(stale["status"]["expiresAt"])
    handled_edit(
        invitations,
        mas,
        secrets_dir,
        "edited",
        token_id,
        {"usageLimit": 3},
        3,
        expires,
        status={"usageLimit": 3},
    )
    # ...and a listing taken after it: the two disagree, which looks like drift.
    listed = {token_id: _listed(mas, token_id)}

    report = asyncio.run(one_pass(control_plane, mas, secrets_dir, [stale], listed, fresh=True))

    assert report.reconciled == 0
    assert mas.token(token_id)["usage_limit"] == 3  # type: ignore[index]
    assert invitations.status("edited")["usageLimit"] == 3


def test_an_expiry_wake_up_does_not_expire_a_token_just_extended(
    control_plane: ControlPlane,
    invitations: InvitationsApi,
    mas: MasDouble,
    operator_env: dict[str, str],
    secrets_dir: Path,
    tmp_path: Path,
) -> None:
    soon = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(hours=1)
    sent = sent_by_the_operator(
        invitations, operator_env, tmp_path, "extended", expiresAt=rfc3339(soon)
    )
    token_id = sent["status"]["tokenId"]

    # What the watch cache and the last listing held when the old expiry came due: the
    # Invitation as it was, and its token as MAS listed it then (just expired).
    past = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(seconds=1)
    stale = json.loads(json.dumps(sent))
    stale["spec"]["expiresAt"] = stale["status"]["expiresAt"] = rfc3339(past)
    listed = {
        token_id: _listed(mas, token_id, usage_limit=1).model_copy(
            update={"expires_at": past, "valid": False}
        )
    }

    # What the update handler did meanwhile: the expiry moved a day on, in MAS and in status.
    later = soon + dt.timedelta(days=1)
    handled_edit(
        invitations,
        mas,
        secrets_dir,
        "extended",
        token_id,
        {"expiresAt": rfc3339(later)},
        1,
        later,
        status={"expiresAt": rfc3339(later)},
    )

    report = asyncio.run(one_pass(control_plane, mas, secrets_dir, [stale], listed, fresh=False))

    status = invitations.status("extended")
    assert (status["phase"], status["expired"], status["valid"]) == ("Sent", False, True)
    assert status["expiresAt"] == rfc3339(later)
    assert "InvitationExpired" not in invitations.event_reasons("extended")
    assert report.failed == 0


def test_a_pass_skips_an_invitation_a_handler_holds(
    control_plane: ControlPlane,
    invitations: InvitationsApi,
    mas: MasDouble,
    operator_env: dict[str, str],
    secrets_dir: Path,
    tmp_path: Path,
) -> None:
    sent = sent_by_the_operator(invitations, operator_env, tmp_path, "held")
    token_id = sent["status"]["tokenId"]
    mas.simulate_registration(token_id)  # something for the pass to write
    listed = {token_id: TokenState.model_validate(mas.token(token_id))}

    async def held(deps: Dependencies) -> SyncReport:
        # A handler holding the lock, e.g. through a 30 s SMTP timeout: the pass goes on.
        async with deps.lock_for(Invitation.from_body(sent)):
            report = SyncReport()
            await asyncio.wait_for(sync_invitations(deps, [sent], listed, report), timeout=10)
            return report

    report = asyncio.run(with_dependencies(control_plane, mas, secrets_dir, held))
    assert (report.skipped, report.patched) == (1, 0)
    assert invitations.status("held")["phase"] == "Sent"  # written by the next pass, not this


def sent_by_the_operator(
    invitations: InvitationsApi, env: dict[str, str], tmp_path: Path, name: str, **spec: Any
) -> Body:
    """An Invitation the real operator issued and mailed; the operator is stopped afterwards."""
    operator = OperatorProcess(env, tmp_path / f"operator-{name}.log").start()
    try:
        invitations.apply(name, email=f"{name}@example.org", **spec)
        return invitations.wait_for_phase(name, "Sent")
    finally:
        operator.stop_after_cleanup()


def handled_edit(
    invitations: InvitationsApi,
    mas: MasDouble,
    secrets_dir: Path,
    name: str,
    token_id: str,
    spec: dict[str, Any],
    usage_limit: int,
    expires_at: dt.datetime,
    *,
    status: dict[str, Any],
) -> None:
    """Carry out an edit as the update handler would: spec, then MAS, then status."""
    invitations.patch_spec(name, **spec)
    OutsideAdmin(
        mas.url, MAS_CLIENT_ID, (secrets_dir / "mas-client-secret").read_text()
    ).set_limits(token_id, usage_limit=usage_limit, expires_at=expires_at)
    generation = invitations.get(name)["metadata"]["generation"]  # type: ignore[index]
    invitations.kubectl(
        "patch",
        "invitation",
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"observedGeneration": generation, **status}}),
    )


def settings_for(mas: MasDouble, secrets_dir: Path) -> Settings:
    return Settings(
        mas_url=mas.url,
        mas_client_id=MAS_CLIENT_ID,
        mas_client_secret_file=secrets_dir / "mas-client-secret",
        smtp_host="127.0.0.1",
        smtp_port=9,
        mail_rate_per_minute=0,
    )


async def with_dependencies(
    control_plane: ControlPlane,
    mas: MasDouble,
    secrets_dir: Path,
    action: Callable[[Dependencies], Awaitable[SyncReport]],
) -> SyncReport:
    login = KubeLogin(kubeconfig=control_plane.kubeconfig_path)
    deps = await build_dependencies(settings_for(mas, secrets_dir), kube=login)
    try:
        return await action(deps)
    finally:
        await close_dependencies(deps)


async def one_pass(
    control_plane: ControlPlane,
    mas: MasDouble,
    secrets_dir: Path,
    bodies: list[Body],
    listed: dict[str, TokenState],
    *,
    fresh: bool,
) -> SyncReport:
    async def run(deps: Dependencies) -> SyncReport:
        report = SyncReport()
        await sync_invitations(deps, bodies, listed, report, fresh=fresh)
        return report

    return await with_dependencies(control_plane, mas, secrets_dir, run)


def _listed(mas: MasDouble, token_id: str, *, usage_limit: int = 3) -> TokenState:
    stored = mas.token(token_id)
    assert stored is not None
    assert stored["usage_limit"] == usage_limit
    return TokenState.model_validate(stored)


def _as_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
