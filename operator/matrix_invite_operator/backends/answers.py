"""Reading a peer's JSON answers into models, without leaking what they contain.

Both backends answer with documents that hold token values, authentik with invitation keys. A
pydantic `ValidationError` quotes input values in its text, so it must never become the cause or
context of an error we raise: only the locations of the problems are reported.
"""

from __future__ import annotations

import json
from typing import TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from ..errors import BackendMisdirected, BackendRejected, OperatorError

Model = TypeVar("Model", bound=BaseModel)


def parse_answer(
    model: type[Model],
    response: httpx.Response,
    *,
    backend: str,
    what: str,
    hint: str,
    misdirected: type[OperatorError] = BackendMisdirected,
    rejected: type[OperatorError] = BackendRejected,
) -> Model:
    """`response` as `model`; else BackendMisdirected (not JSON: whatever answered is not the
    backend's API) or BackendRejected (JSON of the wrong shape), naming the call and a `hint`."""
    try:
        document = json.loads(response.content)
    except ValueError as exc:
        raise misdirected(
            f"{backend} answered {what} with {response.status_code} but the body is not JSON "
            f"({describe_body(response)}): {hint}"
        ) from exc
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        fields = sorted({".".join(map(str, e["loc"])) or "<root>" for e in exc.errors()})
    # Raised outside the handler, so the ValidationError is neither cause nor context.
    raise rejected(
        f"{backend} answered {what} with an unexpected shape (problem at {', '.join(fields[:5])})"
    )


def is_web_page(response: httpx.Response) -> bool:
    """An HTML page: a web server, proxy or login page answered, not a JSON API."""
    content_type = response.headers.get("Content-Type", "").partition(";")[0].strip().lower()
    return content_type in ("text/html", "application/xhtml+xml")


def describe_body(response: httpx.Response) -> str:
    """What kind of body came back, without quoting it (it may hold anything)."""
    content_type = response.headers.get("Content-Type", "").partition(";")[0].strip()
    if not response.content:
        return "an empty body"
    return f"{content_type or 'untyped'}, {len(response.content)} bytes"
