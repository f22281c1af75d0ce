"""The public specification as data, and JSON-Schema validation against it.

By default the schemas are derived from the ``openresponses-types`` package: pydantic models generated from the
Open Responses OpenAPI document (the package records the document's version, ``__spec_version__``). Every model
of the package becomes one JSON Schema (draft 2020-12) under ``components/schemas``, named as its class (the
specification's component names, mostly), and the result is laid out as an OpenAPI document so that one code
path serves both it and a document the user supplies (``turnbench conform --spec PATH``), whose own component
schemas are then used as they are.

Either way the ``jsonschema`` library validates: the document is one resource of a ``referencing`` registry and
every schema is reached by reference (``#/components/schemas/NAME``). OpenAPI's own keywords
(``discriminator``, ``example``, ``x-…``) are annotations the validator ignores.

One deliberate deviation, :data:`FLAT_SSE_ERROR`: the SSE ``error`` event. The specification nests an ``error``
object in it; OpenAI's API sends it flat (``{"type": "error", "code", "message", "param", "sequence_number"}``)
and so does turnbench, which follows the real API where the two differ. An SSE ``error`` event of either shape
passes; the flat one is noted.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Any

import openresponses_types
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from openresponses_types import types as generated
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

__all__ = ["FLAT_SSE_ERROR", "PACKAGE", "Spec", "Violation", "derived_document", "load_spec"]

PACKAGE = f"openresponses-types {openresponses_types.__version__}"
"""Where the default schemas come from: the package and its version."""
_URI = "urn:openresponses:openapi"
_REF = "#/components/schemas/{model}"

FLAT_SSE_ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["type", "message", "sequence_number"],
    "properties": {
        "type": {"const": "error"},
        "code": {"type": ["string", "null"]},
        "message": {"type": "string"},
        "param": {"type": ["string", "null"]},
        "sequence_number": {"type": "integer"},
    },
}
"""The SSE ``error`` event as OpenAI's API sends it (its SDK's ``ResponseErrorEvent``): flat, no nested object."""

FLAT_SSE_ERROR_NOTE = "SSE error event in the real API's flat shape (the specification nests an `error` object)"


@dataclass(frozen=True)
class Violation:
    """One way an instance breaks a schema: where (``response.output[0].status``) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path or '(top)'}: {self.message}"


def _path(err: ValidationError, prefix: str) -> str:
    out = prefix
    for part in err.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _violations(errors: list[ValidationError], prefix: str) -> list[Violation]:
    """Every error, the most telling first (``best_match`` descends into ``oneOf`` branches)."""
    if not errors:
        return []
    first = best_match(errors)
    ordered = [first, *(e for e in errors if e is not first)]
    return [Violation(_path(e, prefix), e.message[:300]) for e in ordered]


class Spec:
    """An OpenAPI document (derived or supplied) and a validator per component schema; ``source`` says where the
    schemas come from (the package and its version, or the file)."""

    def __init__(self, document: dict[str, Any], source: str = "") -> None:
        self.document = document
        self.source = source or PACKAGE
        self.schemas: dict[str, Any] = document["components"]["schemas"]
        resource = Resource.from_contents(document, default_specification=DRAFT202012)
        self._registry: Registry[Any] = Registry().with_resource(_URI, resource)
        self._validators: dict[str, Draft202012Validator] = {}

    @property
    def version(self) -> str:
        return str(self.document.get("info", {}).get("version", "?"))

    @property
    def title(self) -> str:
        return str(self.document.get("info", {}).get("title", "?"))

    @cached_property
    def event_schemas(self) -> dict[str, str]:
        """Streaming event ``type`` → the component schema that defines it (every ``*StreamingEvent``)."""
        out: dict[str, str] = {}
        for name, schema in self.schemas.items():
            if name.endswith("StreamingEvent"):
                kind = self._resolve(schema.get("properties", {}).get("type", {}))
                for t in kind.get("enum", [kind["const"]] if "const" in kind else []):
                    out[str(t)] = name
        return out

    def _resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        """``schema``, or the component it refers to (``{"$ref": "#/components/schemas/NAME"}``)."""
        ref = schema.get("$ref", "")
        prefix = _REF.format(model="")
        if isinstance(ref, str) and ref.startswith(prefix):
            target: dict[str, Any] = self.schemas.get(ref[len(prefix) :], {})
            return target
        return schema

    def validator(self, name: str) -> Draft202012Validator:
        if name not in self.schemas:
            raise KeyError(f"the specification has no schema {name!r}")
        if name not in self._validators:
            self._validators[name] = Draft202012Validator(
                {"$ref": f"{_URI}#/components/schemas/{name}"}, registry=self._registry
            )
        return self._validators[name]

    def check(self, name: str, instance: Any, prefix: str = "") -> list[Violation]:
        """How ``instance`` breaks component schema ``name`` ([] when it conforms); paths start with ``prefix``."""
        return _violations(list(self.validator(name).iter_errors(instance)), prefix)

    def check_event(self, event: Any, *, transport: str, prefix: str = "") -> tuple[list[Violation], list[str]]:
        """A streamed event against the schema of its ``type``: (violations, notes).

        ``transport``: ``https`` (an SSE event) or ``ws`` (a WebSocket-mode message, whose ``error`` is the
        ``WebSocketErrorEvent``). An SSE ``error`` event may have the real API's flat shape (noted). A
        type the specification does not define is a violation; turnbench's own extension events are not sent
        unless asked for, so the cases never see them."""
        if not isinstance(event, dict):
            return [Violation(prefix, f"an event must be a JSON object, got {type(event).__name__}")], []
        kind = event.get("type")
        if kind == "error":
            if transport == "ws":
                return self.check("WebSocketErrorEvent", event, prefix), []
            nested = self.check("ErrorStreamingEvent", event, prefix)
            if not nested:
                return [], []
            flat = _violations(list(Draft202012Validator(FLAT_SSE_ERROR).iter_errors(event)), prefix)
            return (nested, []) if flat else ([], [FLAT_SSE_ERROR_NOTE])
        name = self.event_schemas.get(str(kind))
        if name is None:
            return [Violation(f"{prefix}.type" if prefix else "type", f"{kind!r} is not an event type of the spec")], []
        return self.check(name, event, prefix), []


@cache
def derived_document() -> dict[str, Any]:
    """The package's models as an OpenAPI document: one component schema per model, refs between them as
    ``#/components/schemas/NAME``; ``info`` carries the specification's version the models were generated from."""
    models = [
        cls
        for cls in vars(generated).values()
        if inspect.isclass(cls) and issubclass(cls, BaseModel) and cls.__module__ == generated.__name__
    ]
    _, top = models_json_schema([(m, "validation") for m in models], ref_template=_REF)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Open Responses", "version": str(openresponses_types.__spec_version__)},
        "components": {"schemas": top.get("$defs", {})},
    }


def load_spec(path: Path | None = None) -> Spec:
    """The schemas derived from ``openresponses-types``, or the OpenAPI document at ``path`` (another version of
    the specification, say); a document without ``components/schemas`` is refused."""
    if path is None:
        return Spec(derived_document(), PACKAGE)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"--spec {path}: cannot read an OpenAPI document: {exc}") from exc
    components = document.get("components") if isinstance(document, dict) else None
    if not isinstance(components, dict) or not isinstance(components.get("schemas"), dict):
        raise ValueError(f"--spec {path}: not an OpenAPI document (no components/schemas)")
    return Spec(document, str(path))
