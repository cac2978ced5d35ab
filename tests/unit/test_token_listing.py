"""The sync loop keeps MAS's whole token listing between passes: compact, and the same tokens."""

from __future__ import annotations

import datetime as dt
import tracemalloc

from matrix_invite_operator.backends import TokenState
from matrix_invite_operator.sync import TokenListing
from pydantic import SecretStr

NOW = dt.datetime(2026, 12, 6, 5, 0, tzinfo=dt.UTC)


def token(index: int, **fields: object) -> TokenState:
    values: dict[str, object] = {
        "id": f"01M94TXCRD01MMXBB6T1A{index:05d}",
        "token": SecretStr(f"Zq8rT2vX9pL4mN7kJ3hG{index:04d}"),
        "valid": True,
        "usage_limit": 1,
        "times_used": 0,
        "created_at": NOW + dt.timedelta(seconds=index),
        "expires_at": NOW + dt.timedelta(days=7, seconds=index),
        **fields,
    }
    return TokenState.model_validate(values)


def test_a_listed_token_comes_back_as_it_was_listed() -> None:
    listed = [
        token(1),
        token(2, valid=False, times_used=1, last_used_at=NOW, pending=0),
        token(3, usage_limit=None, revoked_at=NOW, expires_at=None),
    ]
    listing = TokenListing()
    for each in listed:
        listing.add(each)
    assert list(listing) == [t.id for t in listed]  # listed oldest first, as MAS pages
    assert len(listing) == 3
    for each in listed:
        again = listing[each.id]
        assert again == each
        assert again.token.get_secret_value() == each.token.get_secret_value()
        assert again.revoked == each.revoked
    assert listing.get("01UNKNOWN") is None
    assert "01UNKNOWN" not in listing
    assert listed[0].id in listing


def test_a_token_in_the_listing_costs_a_third_of_a_model() -> None:
    """20,000 of them, twice during a pass (issue 24): 1.5 KB each as pydantic models."""
    tokens = [token(i) for i in range(2000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        models = {t.id: t.model_copy() for t in tokens}
        as_models = tracemalloc.get_traced_memory()[0] - before
        del models
        before = tracemalloc.get_traced_memory()[0]
        listing = TokenListing()
        for each in tokens:
            listing.add(each)
        as_listing = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert as_listing < as_models / 3, (as_listing / 2000, as_models / 2000)
