"""text-embeddings-inference's own OpenAPI schemas (tests/fixtures/tei-openapi-1.9.3.json) as JSON Schema validators.

OpenAPI 3.0 marks optional-null with `nullable: true`, which JSON Schema does not know; this converts that into
`anyOf [..., null]` and drops the documentation-only keys, then validates instances against `#/components/schemas/X`
with jsonschema (a schemathesis dependency).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jsonschema

FIXTURE = Path(__file__).parent / "fixtures" / "tei-openapi-1.9.3.json"
_DOC_ONLY = frozenset({"example", "examples", "description", "default", "format", "title"})


def _to_json_schema(node: Any) -> Any:
    if isinstance(node, list):
        return [_to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _to_json_schema(v) for k, v in node.items() if k not in _DOC_ONLY and k != "nullable"}
    if node.get("nullable"):
        return {"anyOf": [out, {"type": "null"}]}
    return out


@functools.cache
def _components() -> dict[str, Any]:
    document = json.loads(FIXTURE.read_text(encoding="utf-8"))
    assert document["info"]["version"] == "1.9.3"
    return {"components": {"schemas": _to_json_schema(document["components"]["schemas"])}}


def tei_validator(name: str) -> jsonschema.Draft202012Validator:
    """A validator for TEI's component schema `name` (e.g. "Info", "ErrorResponse", "EmbedResponse")."""
    schema = {**_components(), "$ref": f"#/components/schemas/{name}"}
    return jsonschema.Draft202012Validator(schema)


def tei_errors(name: str, instance: Any) -> list[str]:
    """Every way `instance` violates TEI's schema `name` (empty when it conforms)."""
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in tei_validator(name).iter_errors(instance)]
