"""API-key authentication, in one place for every transport (HTTPS header, WebSocket upgrade, gRPC metadata).

``Authorization: Bearer <key>``: the scheme is case-insensitive (RFC 7235 §2.1), surrounding whitespace is
not part of the value (RFC 9110 §5.5), and the key is compared in constant time.
"""

from __future__ import annotations

import hmac

from turnbench.errors import AuthenticationError

__all__ = ["check_api_key"]

MISSING = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using "
    "Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)
INCORRECT = "Incorrect API key provided."


def check_api_key(authorization: str | bytes | None, api_key: str | None) -> None:
    """Raise :class:`AuthenticationError` unless ``authorization`` is ``Bearer <api_key>``.

    ``authorization``: the header (or metadata) value as received, None when absent. No key configured
    (``api_key`` None or empty): everything passes.
    """
    if not api_key:
        return
    if authorization is None:
        raise AuthenticationError(MISSING)
    raw = authorization if isinstance(authorization, bytes) else authorization.encode("utf-8", "surrogateescape")
    scheme, _, token = raw.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        raise AuthenticationError(MISSING)
    if not hmac.compare_digest(token.strip(), api_key.encode()):
        raise AuthenticationError(INCORRECT)
