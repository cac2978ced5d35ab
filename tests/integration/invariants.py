"""The promises every scenario must keep, checked against the API server, MAS and the mail sink.

1. Each live Invitation has exactly one valid MAS token (unless it is revoked, used up or
   expired), the one its status names, and that token's value is the one in its Secret.
2. No valid MAS token exists without a live Invitation (orphans are revoked).
3. Every Invitation ends Ready=True, or Stalled=True with a message saying what to do.
4. Every invitee got at least one mail (unless the Invitation is revoked); more than one only
   where a scenario allows the documented window (a crash between the relay's accept and the
   status write).

The promises are one pure function over a `Snapshot` (`evaluate`): the integration tests build
the snapshot from the API server, the MAS double and the SMTP double (`check_invariants`), the
fast layer (tests/reconcile) from its in-memory fakes.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only the types: the fast layer imports this module without a cluster
    from tests.doubles.mas import MasDouble
    from tests.doubles.smtp import SmtpDouble
    from tests.integration.harness import InvitationsApi

Body = dict[str, Any]


@dataclass
class InvariantReport:
    invitations: int = 0
    checks: int = 0
    violations: list[str] = field(default_factory=list)
    duplicate_mails: int = 0

    def check(self, ok: bool, violation: str) -> None:
        self.checks += 1
        if not ok:
            self.violations.append(violation)


@dataclass(frozen=True)
class Snapshot:
    """The world at one moment, as the invariants read it."""

    invitations: Sequence[Body]  # Invitation bodies as the API server holds them
    tokens: Sequence[Mapping[str, Any]]  # the token store's tokens: id, token (clear), valid
    secrets: Mapping[tuple[str, str], str]  # (namespace, Secret name) → the token it holds
    mails: Sequence[str]  # one recipient per delivered copy


def evaluate(
    world: Snapshot,
    *,
    duplicate_mail_allowed: bool | Mapping[str, int] = False,
    mails_expected: Mapping[str, int] | None = None,
) -> InvariantReport:
    """Check the promises on one snapshot.

    `mails_expected`: recipients a scenario mails more than once on purpose (a resend), with
    how many mails they should get (default 1). `duplicate_mail_allowed`: True allows any
    number of copies beyond that; a mapping allows that many per recipient (one per crash in
    the documented window).
    """
    report = InvariantReport()
    live = [b for b in world.invitations if not b["metadata"].get("deletionTimestamp")]
    tokens = {t["id"]: t for t in world.tokens}
    claimed: set[str | None] = set()
    mails = Counter(world.mails)
    report.invitations = len(live)

    for body in live:
        name = body["metadata"]["name"]
        status = body.get("status") or {}
        spec = body["spec"]
        ready, stalled = _condition(body, "Ready"), _condition(body, "Stalled")
        settled = ready is not None and ready["status"] == "True"
        stuck = stalled is not None and stalled["status"] == "True" and bool(stalled["message"])
        report.check(settled or stuck, f"{name}: neither Ready nor Stalled with a message")
        token_id = status.get("tokenId")
        if stuck:
            # A stalled Invitation still owns its token (e.g. the mail bounced): not an orphan.
            claimed.add(token_id)
            continue
        if token_id is None and spec.get("revoked") and status.get("phase") == "Revoked":
            continue  # revoked before a token existed: nothing issued, nothing to mail
        report.check(token_id in tokens, f"{name}: status names token {token_id} unknown to MAS")
        if token_id not in tokens:
            continue
        claimed.add(token_id)
        token = tokens[token_id]
        secret = world.secrets.get((body["metadata"]["namespace"], status.get("secretName", "")))
        report.check(secret == token["token"], f"{name}: Secret and MAS token disagree")
        same_value = [t for t in tokens.values() if t["token"] == secret and t["valid"]]
        expect_valid = status.get("phase") == "Sent"
        report.check(
            len(same_value) == (1 if expect_valid else 0),
            f"{name}: {len(same_value)} valid MAS tokens carry its value",
        )
        recipient = spec["email"]
        count, expected = mails[recipient], (mails_expected or {}).get(recipient, 1)
        # A revoked Invitation owes its address no mail (revoked before the mail, or given a
        # new address while revoked); copies beyond the first still count as duplicates.
        owed = not spec.get("revoked")
        report.check(count >= 1 or not owed, f"{name}: no mail reached {recipient}")
        if expected > 1:
            report.check(count >= expected, f"{name}: {count} of {expected} mails to {recipient}")
        if count > expected:
            report.duplicate_mails += count - expected
            allowed = (
                duplicate_mail_allowed
                if isinstance(duplicate_mail_allowed, bool)
                else count - expected <= duplicate_mail_allowed.get(recipient, 0)
            )
            report.check(allowed, f"{name}: {count} mails outside the crash window")

    for token in tokens.values():
        report.check(
            not token["valid"] or token["id"] in claimed,
            f"orphan: valid MAS token {token['id']} belongs to no live Invitation",
        )
    return report


def _condition(body: Body, type_: str) -> Body | None:
    for item in (body.get("status") or {}).get("conditions", []):
        if item["type"] == type_:
            found: Body = item
            return found
    return None


def check_invariants(
    invitations: InvitationsApi,
    mas: MasDouble,
    smtp: SmtpDouble,
    *,
    duplicate_mail_allowed: bool = False,
) -> InvariantReport:
    listed = invitations.kubectl("get", "invitations", "-o", "name").split()
    bodies = [invitations.get(item.split("/", 1)[1]) for item in listed]
    present = [b for b in bodies if b is not None]
    secrets: dict[tuple[str, str], str] = {}
    for body in present:
        name = (body.get("status") or {}).get("secretName")
        secret = invitations.secret(name) if name else None
        if name and secret is not None:
            value = base64.b64decode(secret["data"]["token"]).decode()
            secrets[(body["metadata"]["namespace"], name)] = value
    world = Snapshot(
        invitations=present,
        tokens=mas.tokens(),
        secrets=secrets,
        mails=[rcpt for m in smtp.messages for rcpt in m.rcpt_tos],
    )
    return evaluate(world, duplicate_mail_allowed=duplicate_mail_allowed)
