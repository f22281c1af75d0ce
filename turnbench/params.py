"""The request parameters the scripted model has no use for, checked as the real API checks them and echoed on
the response as it echoes them (docs/protocol/http-sse.md, The response object).

``temperature``, ``top_p``, the penalties, ``top_logprobs``, ``max_tool_calls``, ``safety_identifier`` and
``text.verbosity`` are range-checked here, in ``validate``; their types, and the enumerations (``truncation``,
``service_tier``, ``reasoning``, ``prompt_cache_retention``), are checked when the request is decoded
(:class:`turnbench.schema.ResponseCreate`). Every refusal is an :class:`InvalidRequestError` with the real API's
code (``decimal_above_max_value`` …) and the parameter's name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from turnbench.errors import InvalidRequestError
from turnbench.schema import ResponseCreate

__all__ = ["DECIMAL_RANGES", "INTEGER_RANGES", "MAX_IDENTIFIER_CHARS", "check_sampling", "served_tier", "text_config"]

DECIMAL_RANGES: Mapping[str, tuple[float, float]] = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
}
"""Parameter → the inclusive range of the number it may hold."""
INTEGER_RANGES: Mapping[str, tuple[int, int]] = {"top_logprobs": (0, 20), "max_tool_calls": (0, 2**31 - 1)}
MAX_IDENTIFIER_CHARS = 64  # safety_identifier
VERBOSITY = ("low", "medium", "high")


def _number(value: float | int) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def check_sampling(req: ResponseCreate) -> None:
    """Every echoed parameter of ``req`` within its range. Raises: :class:`InvalidRequestError`."""
    for name, (lo, hi) in DECIMAL_RANGES.items():
        value = getattr(req, name)
        if value is None:
            continue
        if not math.isfinite(value):
            raise InvalidRequestError(f"Invalid '{name}': expected a finite number.", name, code="invalid_value")
        if not lo <= value <= hi:
            above = value > hi
            raise InvalidRequestError(
                f"Invalid '{name}': decimal {'above maximum' if above else 'below minimum'} value. Expected a value "
                f"{'<=' if above else '>='} {_number(hi if above else lo)}, but got {_number(value)} instead.",
                name,
                code="decimal_above_max_value" if above else "decimal_below_min_value",
            )
    for name, (ilo, ihi) in INTEGER_RANGES.items():
        number = getattr(req, name)
        if number is not None and not ilo <= number <= ihi:
            above = number > ihi
            raise InvalidRequestError(
                f"Invalid '{name}': integer {'above maximum' if above else 'below minimum'} value. Expected a value "
                f"{'<=' if above else '>='} {ihi if above else ilo}, but got {str(number)[:30]} instead.",
                name,
                code="integer_above_max_value" if above else "integer_below_min_value",
            )
    ident = req.safety_identifier
    if ident is not None and len(ident) > MAX_IDENTIFIER_CHARS:
        raise InvalidRequestError(
            f"Invalid 'safety_identifier': string too long. Expected a string with maximum length "
            f"{MAX_IDENTIFIER_CHARS}, but got a string with length {len(ident)} instead.",
            "safety_identifier",
            code="string_above_max_length",
        )
    verbosity = req.text.get("verbosity") if isinstance(req.text, Mapping) else None
    if verbosity is not None and verbosity not in VERBOSITY:
        raise InvalidRequestError(
            f"Invalid value for 'text.verbosity': {str(verbosity)[:40]!r}. Supported values are: 'low', 'medium' and "
            "'high'.",
            "text.verbosity",
            code="invalid_value",
        )


def text_config(text: Any) -> dict[str, Any]:
    """``text`` on the response: the request's format (default ``{"type": "text"}``) and verbosity (default
    ``medium``). Call after :class:`turnbench.engine.policy.TextFormat` has checked the request's."""
    given: Mapping[str, Any] = text if isinstance(text, Mapping) else {}
    return {"format": given.get("format") or {"type": "text"}, "verbosity": given.get("verbosity") or "medium"}


def served_tier(requested: str | None) -> str:
    """The service tier a response reports: the requested one, ``default`` for ``auto`` or none (the real API
    reports the tier that served the request, and a project's ``auto`` is ``default``)."""
    return requested if requested not in (None, "auto") else "default"
