"""Errors a user can cause in a whole search, raised with a message that names the fix."""

from __future__ import annotations

__all__ = ["SearchError"]


class SearchError(RuntimeError):
    """A search that cannot start or produced no usable candidate."""
