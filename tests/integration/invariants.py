"""The promises every scenario must keep, checked against the API server, MAS and the mail sink.

1. Each live Invitation has exactly one valid MAS token (unless it is revoked, used up or
   expired), the one its status names, and that token's value is the one in its Secret.
2. No valid MAS token exists without a live Invitation (orphans are revoked).
3. Every Invitation ends Ready=True, or Stalled=True with a message saying what to do.
4. Every invitee got at least one mail; more than one only where a scenario allows the
   documented window (a crash between the relay's accept and the status write).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from tests.doubles.mas import MasDouble
from tests.doubles.smtp import SmtpDouble
from tests.integration.harness import InvitationsApi, condition


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


def check_invariants(
    invitations: InvitationsApi,
    mas: MasDouble,
    smtp: SmtpDouble,
    *,
    duplicate_mail_allowed: bool = False,
) -> InvariantReport:
    report = InvariantReport()
    listed = invitations.kubectl("get", "invitations", "-o", "name").split()
    bodies = [invitations.get(item.split("/", 1)[1]) for item in listed]
    live = [b for b in bodies if b is not None and not b["metadata"].get("deletionTimestamp")]
    tokens = {t["id"]: t for t in mas.tokens()}
    claimed: set[str | None] = set()
    mails = Counter(rcpt for m in smtp.messages for rcpt in m.rcpt_tos)
    report.invitations = len(live)

    for body in live:
        name = body["metadata"]["name"]
        status = body.get("status") or {}
        spec = body["spec"]
        ready, stalled = condition(body, "Ready"), condition(body, "Stalled")
        settled = ready is not None and ready["status"] == "True"
        stuck = stalled is not None and stalled["status"] == "True" and bool(stalled["message"])
        report.check(settled or stuck, f"{name}: neither Ready nor Stalled with a message")
        token_id = status.get("tokenId")
        if stuck:
            # A stalled Invitation still owns its token (e.g. the mail bounced): not an orphan.
            claimed.add(token_id)
            continue
        report.check(token_id in tokens, f"{name}: status names token {token_id} unknown to MAS")
        if token_id not in tokens:
            continue
        claimed.add(token_id)
        token = tokens[token_id]
        secret = invitations.secret_token(status["secretName"])
        report.check(secret == token["token"], f"{name}: Secret and MAS token disagree")
        same_value = [t for t in tokens.values() if t["token"] == secret and t["valid"]]
        expect_valid = status.get("phase") == "Sent"
        report.check(
            len(same_value) == (1 if expect_valid else 0),
            f"{name}: {len(same_value)} valid MAS tokens carry its value",
        )
        recipient = spec["email"]
        count = mails[recipient]
        report.check(count >= 1, f"{name}: no mail reached {recipient}")
        if count > 1:
            report.duplicate_mails += count - 1
            report.check(duplicate_mail_allowed, f"{name}: {count} mails outside the crash window")

    for token in tokens.values():
        report.check(
            not token["valid"] or token["id"] in claimed,
            f"orphan: valid MAS token {token['id']} belongs to no live Invitation",
        )
    return report
