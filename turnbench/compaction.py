"""Compaction: the ``encrypted_content`` of a compaction item, and the conversation it stands for.

``POST /v1/responses/compact`` keeps a conversation's user messages verbatim and replaces everything else
(assistant messages, function calls and their outputs, system and developer messages) with one compaction
item, as the real API does. The real API's content is an encrypted summary only its models read; turnbench's
is the replaced items themselves, so a continuation from it has the same context, token for token::

    tbc1.<payload>.<tag>    payload: base64url of zlib(JSON {"v": 1, "items": [...]}), the items in order
                            tag:     base64url of the first 16 bytes of HMAC-SHA256(key, "tbc1.<payload>")

It is signed, not encrypted: anyone can read it, nobody without the key can forge or alter it. The key is
derived from the server's API key (:func:`compaction_key`), so every process and every transport of one
deployment reads the others' compaction items, and a deployment with another key refuses them. Sent back as
an input item, a compaction item is expanded where the input is validated (:meth:`Compactor.expand`): its
items join the context and count as input tokens. A malformed, truncated, altered or foreign one is an
``invalid_request_error`` (code ``invalid_encrypted_content``) naming ``input[N].encrypted_content``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import zlib
from collections.abc import Sequence

import msgspec

from turnbench.errors import InvalidRequestError
from turnbench.schema import CompactionItem, InputItem

__all__ = ["PREFIX", "VERSION", "Compactor", "compaction_key"]

VERSION = 1
PREFIX = f"tbc{VERSION}."
TAG_BYTES = 16


class _Payload(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    v: int
    items: list[InputItem]


_decoder = msgspec.json.Decoder(_Payload)


def compaction_key(api_key: str | None) -> bytes:
    """The signing key of a deployment whose API key is ``api_key`` (None: no key, a fixed one)."""
    return hashlib.sha256(b"turnbench compaction v1\0" + (api_key or "").encode()).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    """Strict: a character outside the base64url alphabet is an error, not skipped."""
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


class Compactor:
    """Encodes the replaced items of a conversation, and expands a compaction item back into them.

    ``max_bytes``: the largest payload it inflates. Only a payload that passed its signature check is inflated,
    so only what this deployment encoded: the bound is a sanity check, not the defence against a zip bomb."""

    __slots__ = ("_key", "max_bytes")

    def __init__(self, key: bytes, max_bytes: int) -> None:
        self._key, self.max_bytes = key, max_bytes

    def _tag(self, signed: bytes) -> bytes:
        return hmac.new(self._key, signed, hashlib.sha256).digest()[:TAG_BYTES]

    def encode(self, items: Sequence[InputItem]) -> str:
        """The ``encrypted_content`` standing for ``items``."""
        payload = _b64(zlib.compress(msgspec.json.encode(_Payload(v=VERSION, items=list(items))), 6))
        signed = PREFIX + payload
        return f"{signed}.{_b64(self._tag(signed.encode('ascii')))}"

    def expand(self, item: CompactionItem, index: int) -> list[InputItem]:
        """The items ``item`` (``input[index]``) stands for. Raises: :class:`InvalidRequestError`
        (``invalid_encrypted_content``) when it is not one of this deployment's compaction items."""
        param = f"input[{index}].encrypted_content"
        content = item.encrypted_content
        signed, _, tag = content.rpartition(".")
        if not content.startswith(PREFIX) or not signed or not tag.isascii():
            raise _invalid(param, "it is not a turnbench compaction item (expected 'tbc1.…')")
        try:
            given = _unb64(tag)
        except (binascii.Error, ValueError):
            given = b""
        if not hmac.compare_digest(given, self._tag(signed.encode("ascii", "replace"))):
            raise _invalid(param, "its signature does not match: it was altered, or made by another deployment")
        try:
            packed = _unb64(signed[len(PREFIX) :])
            inflater = zlib.decompressobj()
            raw = inflater.decompress(packed, self.max_bytes)
            complete = inflater.eof and not inflater.unconsumed_tail
            payload = _decoder.decode(raw) if complete else None
        except (binascii.Error, ValueError, zlib.error, msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise _invalid(param, "its content could not be read") from exc
        if payload is None:
            raise _invalid(param, f"it inflates past {self.max_bytes} bytes")
        if payload.v != VERSION:
            raise _invalid(param, f"version {payload.v} is not supported (this server reads version {VERSION})")
        return payload.items


def _invalid(param: str, why: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"Invalid '{param}': the compaction item could not be verified: {why}.",
        param,
        code="invalid_encrypted_content",
    )
