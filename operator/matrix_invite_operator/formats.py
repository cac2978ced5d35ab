"""Value formats that the CRD models, the settings and the status share: one definition each.

- Timestamps in status and in Kubernetes objects: RFC 3339 in UTC with a trailing Z
  (`rfc3339` writes whole seconds, `parse_rfc3339` reads any precision and offset;
  Kubernetes' MicroTime of Leases is `leadership`'s own).
- Durations as Go writes them (`168h`, `1h30m`): `GO_DURATION_PATTERN` (RE2, also in the CRD's
  schema) and `parse_go_duration`.
- Matrix room IDs and aliases: `ROOM_PATTERN`.
- HTTP's Retry-After (delta seconds or an HTTP date): `retry_after_seconds`, the one parser for
  MAS, Synapse and the Kubernetes API.

Pure functions and constants; nothing above `errors` imported, so every layer may use them.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import re
from typing import overload

# A room ID or alias (spec.rooms and the notice room). Room IDs of room version 12 carry no
# server name (`!opaque`); aliases always do (`#name:server`). Spaces are rooms.
ROOM_PATTERN = r"^(![^\s:]+(:[^\s/]+)?|#[^\s:]+:[^\s/]+)$"

_GO_AMOUNT = r"[0-9]+(\.[0-9]+)?"
_GO_UNITS = "ns|us|µs|ms|s|m|h"
#: A Go duration, written so that RE2 (the API server's CEL and schema patterns) reads it too.
GO_DURATION_PATTERN = rf"^({_GO_AMOUNT}({_GO_UNITS}))+$"
_GO_DURATION = re.compile(GO_DURATION_PATTERN)
_GO_DURATION_PART = re.compile(rf"({_GO_AMOUNT})({_GO_UNITS})")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_go_duration(text: str) -> dt.timedelta:
    """Parse a Go duration (`168h`, `1h30m`, `90s`): the format Kubernetes users already write."""
    if not _GO_DURATION.match(text):
        raise ValueError(f"{text!r} is not a duration such as 168h, 36h30m or 90m")
    seconds = sum(
        float(part[1]) * _UNIT_SECONDS[part[3]] for part in _GO_DURATION_PART.finditer(text)
    )
    return dt.timedelta(seconds=seconds)


@overload
def rfc3339(moment: dt.datetime) -> str: ...
@overload
def rfc3339(moment: None) -> None: ...
@overload
def rfc3339(moment: dt.datetime | None) -> str | None: ...
def rfc3339(moment: dt.datetime | None) -> str | None:
    """The one timestamp format we write into status: UTC, seconds, a trailing Z."""
    if moment is None:
        return None
    return moment.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@overload
def parse_rfc3339(text: str) -> dt.datetime: ...
@overload
def parse_rfc3339(text: None) -> None: ...
@overload
def parse_rfc3339(text: str | None) -> dt.datetime | None: ...
def parse_rfc3339(text: str | None) -> dt.datetime | None:
    """An RFC 3339 timestamp as Kubernetes and our status write it (Z or an offset); an unset
    field (None) stays None."""
    if text is None:
        return None
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


#: Bounds on a server's Retry-After: a hostile or confused header must neither spin us nor
#: park us for a day.
RETRY_AFTER_BOUNDS = (1.0, 3600.0)


def retry_after_seconds(
    header: str | None, default: float, *, now: dt.datetime | None = None
) -> float:
    """Seconds to wait as a Retry-After header asks (RFC 9110: delta seconds or an HTTP date),
    within `RETRY_AFTER_BOUNDS`; `default` when there is none or it cannot be read."""
    text = (header or "").strip()
    if not text:
        return default
    if text.isdigit():
        seconds = float(text)
    else:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return default
        if when.tzinfo is None:  # an HTTP date is GMT; a sloppy one without a zone, too
            when = when.replace(tzinfo=dt.UTC)
        seconds = (when - (now or dt.datetime.now(dt.UTC))).total_seconds()
    low, high = RETRY_AFTER_BOUNDS
    return min(max(seconds, low), high)
