"""docs/onboarding.md shows exactly the files in docs/examples/onboarding/, and they work:
the Invitations parse as the CRD's spec, the values pass the chart's schema and reach the
operator's settings."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from matrix_invite_operator.models import InvitationSpec
from matrix_invite_operator.settings import Settings

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "onboarding.md"
EXAMPLES = REPO / "docs" / "examples" / "onboarding"
CHART = REPO / "charts" / "matrix-invite-operator"
MARKED = re.compile(r"<!-- file: (\S+) -->\n```yaml\n(.*?)```\n", re.DOTALL)


def test_every_example_is_shown_byte_for_byte() -> None:
    shown = {path: text for path, text in MARKED.findall(GUIDE.read_text(encoding="utf-8"))}
    files = {f"docs/examples/onboarding/{p.name}" for p in EXAMPLES.glob("*.yaml")}
    assert set(shown) == files
    for path, text in shown.items():
        assert (REPO / path).read_text(encoding="utf-8") == text, path


@pytest.mark.parametrize("name", ["invitation-with-rooms.yaml", "invitation-account-by-hand.yaml"])
def test_the_invitations_are_valid_specs(name: str) -> None:
    body = yaml.safe_load((EXAMPLES / name).read_text(encoding="utf-8"))
    assert (body["apiVersion"], body["kind"]) == ("matrix-invite.dev/v1alpha1", "Invitation")
    spec = InvitationSpec.model_validate(body["spec"])
    assert spec.rooms


def test_the_values_pass_the_chart_schema_and_configure_the_operator() -> None:
    defaults: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    mine = yaml.safe_load((EXAMPLES / "values-onboarding.yaml").read_text(encoding="utf-8"))
    values = {**defaults, "onboarding": {**defaults["onboarding"], **mine["onboarding"]}}
    schema = yaml.safe_load((CHART / "values.schema.json").read_text(encoding="utf-8"))
    jsonschema.validate(values, schema)
    onboarding = mine["onboarding"]
    settings = Settings(
        homeserver_url=onboarding["homeserverUrl"],
        onboarding_user=onboarding["user"],
        onboarding_session_seconds=onboarding["sessionSeconds"],
        room_membership=onboarding["roomMembership"],
        notice_room=onboarding["noticeRoom"],
        onboarding_rooms=",".join(onboarding["rooms"]),
    )
    assert (settings.homeserver_client_url() or "").rstrip("/") == onboarding["homeserverUrl"]
    assert settings.onboarding_rooms == onboarding["rooms"]


def test_the_ess_values_give_synapse_auto_join_rooms_of_existing_form() -> None:
    values = yaml.safe_load((EXAMPLES / "ess-synapse-auto-join.yaml").read_text(encoding="utf-8"))
    (fragment,) = values["synapse"]["additional"].values()
    config = yaml.safe_load(fragment["config"])
    assert set(config) == {"auto_join_rooms", "autocreate_auto_join_rooms"}
    assert config["autocreate_auto_join_rooms"] is False
    for room in config["auto_join_rooms"]:  # aliases of rooms that must exist already
        InvitationSpec(email="a@example.org", rooms=[room])
        assert room.startswith("#")


def test_a_spec_with_a_room_twice_or_a_bad_reference_is_refused() -> None:
    with pytest.raises(ValueError, match="once"):
        InvitationSpec(email="a@example.org", rooms=["#a:example.org", "#a:example.org"])
    with pytest.raises(ValueError, match="pattern"):
        InvitationSpec(email="a@example.org", rooms=["general"])
    with pytest.raises(ValueError, match="pattern"):
        InvitationSpec(email="a@example.org", account="ada")
