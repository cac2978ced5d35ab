"""The CRD in crds/ and the pydantic models in models.py describe the same fields and bounds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from matrix_invite_operator.models import (
    Condition,
    InvitationSpec,
    InvitationStatus,
    Phase,
)
from pydantic import BaseModel

CRD_PATH = Path(__file__).resolve().parents[2] / "crds" / "invitations.matrix-invite.dev.yaml"


def _crd_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD_PATH.read_text(encoding="utf-8"))
    (version,) = crd["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def _json_schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema(by_alias=True, mode="validation")


def _flatten(prop: dict[str, Any]) -> dict[str, Any]:
    """Pydantic writes `X | None` as anyOf [X, null]; compare the X."""
    if "anyOf" in prop:
        (inner,) = [p for p in prop["anyOf"] if p.get("type") != "null"]
        return {**inner, **{k: v for k, v in prop.items() if k != "anyOf"}}
    return prop


KEYWORDS = ("maxLength", "pattern", "minimum", "maximum", "default", "enum", "maxItems")
TYPE_OF = {"integer": "integer", "string": "string", "boolean": "boolean", "array": "array"}


def _compare(model: type[BaseModel], crd: dict[str, Any], defs: dict[str, Any]) -> list[str]:
    schema = _json_schema(model)
    defs = {**defs, **schema.get("$defs", {})}
    problems: list[str] = []
    model_props = schema["properties"]
    crd_props = crd["properties"]
    if set(model_props) != set(crd_props):
        problems.append(
            f"{model.__name__}: only in model {sorted(set(model_props) - set(crd_props))}, "
            f"only in CRD {sorted(set(crd_props) - set(model_props))}"
        )
    if set(schema.get("required", [])) != set(crd.get("required", [])):
        problems.append(f"{model.__name__}: required differs")
    for name in sorted(set(model_props) & set(crd_props)):
        mine = _flatten(model_props[name])
        if "$ref" in mine:
            mine = {
                **defs[mine["$ref"].rsplit("/", 1)[1]],
                **{k: v for k, v in mine.items() if k != "$ref"},
            }
        theirs = crd_props[name]
        formats = {mine.get("format"), theirs.get("format")}
        if "date-time" in formats and len(formats) > 1:
            problems.append(f"{model.__name__}.{name}: date-time format differs")
        expected_type = "string" if mine.get("format") == "date-time" else mine.get("type")
        if expected_type != theirs.get("type"):
            problems.append(
                f"{model.__name__}.{name}: type {expected_type} vs {theirs.get('type')}"
            )
        for keyword in KEYWORDS:
            if mine.get(keyword) != theirs.get(keyword):
                if keyword == "default" and mine.get(keyword) is None and keyword not in theirs:
                    continue
                if (
                    keyword == "maxLength"
                    and expected_type == "string"
                    and mine.get("format") == "date-time"
                ):
                    continue
                problems.append(
                    f"{model.__name__}.{name}.{keyword}: model {mine.get(keyword)!r} "
                    f"vs CRD {theirs.get(keyword)!r}"
                )
    return problems


def test_spec_model_matches_crd() -> None:
    assert _compare(InvitationSpec, _crd_schema()["properties"]["spec"], {}) == []


def test_status_model_matches_crd() -> None:
    status = _crd_schema()["properties"]["status"]
    defs = _json_schema(InvitationStatus).get("$defs", {})
    assert _compare(InvitationStatus, status, defs) == []
    conditions = status["properties"]["conditions"]["items"]
    assert _compare(Condition, conditions, {}) == []


def test_phase_enum_matches_crd() -> None:
    crd_phases = _crd_schema()["properties"]["status"]["properties"]["phase"]["enum"]
    assert crd_phases == [p.value for p in Phase]


def test_comparison_catches_drift() -> None:
    """The check above can fail: a CRD with one bound changed is reported."""
    spec = _crd_schema()["properties"]["spec"]
    spec["properties"]["usageLimit"]["maximum"] = 1000
    del spec["properties"]["locale"]
    problems = _compare(InvitationSpec, spec, {})
    assert any("usageLimit.maximum" in p for p in problems)
    assert any("locale" in p for p in problems)


def test_every_string_and_list_is_bounded() -> None:
    """CEL cost estimation rejects unbounded strings and lists; every one needs a bound."""
    unbounded: list[str] = []

    def walk(node: dict[str, Any], path: str) -> None:
        is_string = node.get("type") == "string" and path not in {".apiVersion", ".kind"}
        if is_string and "maxLength" not in node and "enum" not in node:
            unbounded.append(path)
        if node.get("type") == "array" and "maxItems" not in node:
            unbounded.append(path)
        for name, child in node.get("properties", {}).items():
            walk(child, f"{path}.{name}")
        if "items" in node:
            walk(node["items"], f"{path}[]")

    walk(_crd_schema(), "")
    assert unbounded == []


@pytest.mark.parametrize(
    "email",
    ["a@example.org", "jörg@example.org", "first.last+tag@sub.example.co.uk"],
)
def test_model_accepts_bare_addresses(email: str) -> None:
    assert InvitationSpec(email=email).email == email


@pytest.mark.parametrize(
    "email",
    ["Jörg <j@example.org>", "no-at-sign", "a@b", "a b@example.org", "a@example.org\n"],
)
def test_model_rejects_other_addresses(email: str) -> None:
    with pytest.raises(ValueError, match="email"):
        InvitationSpec(email=email)
