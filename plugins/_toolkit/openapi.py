"""Validation of responses against the operation's response schema in an OpenAPI 3.x document.

The operation is found by the request's method and path (matched against the document's path
templates, ``/v1/charges/{id}``), the response by status (``200``, then ``2XX``, then ``default``),
the schema by a JSON media type. ``$ref``s are resolved by ``referencing`` against the whole
document, so a schema that points into ``components`` works as it does for any OpenAPI tool.
OpenAPI 3.1 schemas are JSON Schema 2020-12; 3.0 schemas are validated as the Draft 4 they extend.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.sdk import clip

if TYPE_CHECKING:
    from referencing import Registry

__all__ = ["OpenAPIDocument", "load_document"]

_URN = "urn:vantage:openapi"
_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def _escape(segment: str) -> str:
    return segment.replace("~", "~0").replace("/", "~1")


@dataclass
class OpenAPIDocument:
    """A parsed OpenAPI 3.x document, ready to validate responses."""

    document: dict[str, Any]

    def __post_init__(self) -> None:
        version = str(self.document.get("openapi", ""))
        if not version.startswith("3."):
            raise ValueError(f"not an OpenAPI 3.x document (openapi: {version or 'missing'})")
        if not isinstance(self.document.get("paths"), dict):
            raise ValueError("the document has no 'paths'")
        # jsonschema and referencing load with the first OpenAPI document (when the configuration
        # is read), not with the http probe, nor during a run, whose duration they would lengthen.
        import jsonschema
        from referencing import Registry
        from referencing.jsonschema import DRAFT4, DRAFT202012

        self._v31 = version.startswith("3.1")
        self._validator_class = jsonschema.Draft202012Validator if self._v31 else jsonschema.Draft4Validator
        spec = DRAFT202012 if self._v31 else DRAFT4
        self._registry: Registry[Any] = Registry().with_resource(_URN, spec.create_resource(self.document))
        self._validators: dict[str, Any] = {}

    def template_for(self, path: str, method: str) -> str | None:
        """The path template of the document that ``path`` matches and that has ``method``."""
        candidates = []
        for template, item in self.document["paths"].items():
            if not isinstance(item, dict) or method.lower() not in item:
                continue
            pattern = "^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$"
            if re.match(pattern, path):
                candidates.append(template)
        # The most literal template wins: /charges/search over /charges/{id}.
        return min(candidates, key=lambda t: t.count("{")) if candidates else None

    def validate(
        self, template: str, method: str, status: int, body: Any, redact: Callable[[str], str]
    ) -> str | None:
        """None when the body matches the operation's schema for ``status`` (or there is none);
        else what is wrong, quoting the body as ``redact`` leaves it."""
        responses = self.document["paths"][template][method.lower()].get("responses", {})
        key = next((k for k in (str(status), f"{str(status)[0]}XX", "default") if k in responses), None)
        if key is None:
            return None
        content = responses[key].get("content", {}) if isinstance(responses[key], dict) else {}
        media = next((m for m in content if m == "application/json" or m.endswith("+json")), None)
        if media is None or "schema" not in content[media]:
            return None
        pointer = "/".join(
            _escape(p) for p in ("paths", template, method.lower(), "responses", key, "content", media)
        )
        ref = f"{_URN}#/{pointer}/schema"
        import jsonschema  # loaded already, with the document

        validator = self._validators.get(ref)
        if validator is None:
            validator = self._validator_class({"$ref": ref}, registry=self._registry)
            self._validators[ref] = validator
        try:
            error = jsonschema.exceptions.best_match(validator.iter_errors(body))
        except jsonschema.exceptions.RefResolutionError as exc:  # pragma: no cover - broken documents
            return f"the OpenAPI schema cannot be resolved: {exc}"
        except Exception as exc:  # referencing raises its own errors for a dangling $ref
            return f"the OpenAPI schema cannot be used: {type(exc).__name__}: {exc}"
        if error is None:
            return None
        where = "$" + "".join(f"[{p!r}]" if isinstance(p, str) else f"[{p}]" for p in error.absolute_path)
        return f"at {where}: {clip(error.message, 200, redact)}"


def parse_document(text: str, source: str) -> OpenAPIDocument:
    import yaml  # loaded with the first OpenAPI document, not with the http probe

    try:
        document = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"{source} is neither JSON nor YAML: {exc}") from None
    if not isinstance(document, dict):
        raise ValueError(f"{source} is not an OpenAPI document")
    try:
        return OpenAPIDocument(document)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None


def load_document(path: Path) -> OpenAPIDocument:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{str(path)!r} cannot be read: {exc.strerror}") from None
    return parse_document(text, repr(str(path)))
