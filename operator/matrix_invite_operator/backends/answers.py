"""Reading a token backend's JSON answers into models, without leaking what they contain.

Both backends answer with documents that hold token values. A pydantic `ValidationError` quotes
input values in its text, so it must never become the cause or context of an error we raise:
only the locations of the problems are reported.
"""

from __future__ import annotations

import json
from typing import TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from ..errors import BackendRejected

Model = TypeVar("Model", bound=BaseModel)


def parse_answer(
    model: type[Model], response: httpx.Response, *, backend: str, what: str, hint: str
) -> Model:
    """`response` as `model`, or BackendRejected naming the backend, the call and a `hint`."""
    try:
        document = json.loads(response.content)
    except ValueError as exc:
        raise BackendRejected(
            f"{backend} answered {what} with {response.status_code} but the body is not JSON: "
            f"{hint}"
        ) from exc
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        fields = sorted({".".join(map(str, e["loc"])) or "<root>" for e in exc.errors()})
    # Raised outside the handler, so the ValidationError is neither cause nor context.
    raise BackendRejected(
        f"{backend} answered {what} with an unexpected shape (problem at {', '.join(fields[:5])})"
    )
