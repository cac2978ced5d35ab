"""The MAS and SMTP doubles of the integration tests, for the chart's install test."""

from __future__ import annotations

from tests.integration.conftest import mas, smtp

__all__ = ["mas", "smtp"]
