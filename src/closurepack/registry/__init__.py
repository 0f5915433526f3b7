"""Registry transport: credentials, authentication, and (engineer E) the HTTP client, push, pull."""

from __future__ import annotations

__all__: list[str] = []
