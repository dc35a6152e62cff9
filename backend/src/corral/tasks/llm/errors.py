"""Typed, user-facing failures of ``llm.generate`` and the provider-error classification."""

from __future__ import annotations

import email.utils
import time

import openai

from corral.tasks._base import TaskUserError


class UnknownModel(TaskUserError):
    error_type = "UnknownModel"


class ProviderRejected(TaskUserError):
    """The provider refused the request itself (4xx): retrying or another model will not help."""

    error_type = "ProviderRejected"


class ProviderUnavailable(TaskUserError):
    """Every model in the chain failed with transient errors (or is unusable)."""

    error_type = "ProviderUnavailable"


class InvalidJSON(TaskUserError):
    error_type = "InvalidJSON"


# Statuses worth retrying on the same model (rate limits, overload, gateway trouble).
_TRANSIENT_STATUSES = frozenset({408, 409, 425, 429})
# Statuses that say "this model (or its key) cannot serve anyone": move on to the next model.
_UNUSABLE_STATUSES = frozenset({401, 403, 404})


def is_transient(exc: BaseException) -> bool:
    """429, 5xx, timeouts and connection errors (incl. a stream cut mid-way) are transient."""
    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in _TRANSIENT_STATUSES or exc.status_code >= 500
    return False


def is_unusable_model(exc: BaseException) -> bool:
    return isinstance(exc, openai.APIStatusError) and exc.status_code in _UNUSABLE_STATUSES


def retry_after_s(exc: BaseException | None) -> float | None:
    """The provider's ``Retry-After`` (seconds or HTTP date), if it sent one."""
    if not isinstance(exc, openai.APIStatusError):
        return None
    headers = exc.response.headers
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(float(ms) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(parsed.timestamp() - time.time(), 0.0) if parsed else None


def describe(exc: BaseException) -> str:
    """A short, key-free description of a provider error for messages and logs."""
    if isinstance(exc, openai.APIStatusError):
        detail = exc.message
        if isinstance(exc.body, dict):
            inner = exc.body.get("error", exc.body)
            if isinstance(inner, dict) and inner.get("message"):
                detail = str(inner["message"])
        return f"HTTP {exc.status_code}: {detail}"[:500]
    if isinstance(exc, openai.APITimeoutError):
        return "request timed out"
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__
        return f"connection failed ({type(cause).__name__ if cause else 'no response'})"
    return f"{type(exc).__name__}: {exc}"[:500]
