"""OpenAI's API description for files, fine-tuning and models, as an oracle for tests.

``openapi_document()`` merges the two extracts under ``spec_openai/`` into one OpenAPI 3.1
document (paths under ``/v1``, as the SDK calls them); ``validate_response`` checks one JSON
answer against the schema that document declares for its operation and status. The same
document drives the schemathesis run, so both tests judge by one rulebook, and every
adjustment to OpenAI's text is made here, in ``_adjust``.
"""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

SPEC_DIR = Path(__file__).parent / "spec_openai"
PREFIX = "/v1"
_URI = "urn:openai-openapi"
_METHODS = ("get", "put", "post", "delete", "patch")
ERROR_FIELDS = ("message", "type", "param", "code")


def openapi_document() -> dict[str, Any]:
    """A fresh copy of the merged document (callers such as schemathesis may mutate it)."""
    return copy.deepcopy(_document())


@functools.cache
def _document() -> dict[str, Any]:
    paths = yaml.safe_load((SPEC_DIR / "spec_paths_finetune_files_models.yaml").read_text())
    schemas = yaml.safe_load((SPEC_DIR / "spec_schemas_finetune_files_models.yaml").read_text())
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "OpenAI API: files, fine-tuning, models (extract)", "version": "2.3.0"},
        "paths": {PREFIX + path: ops for path, ops in paths.items()},
        "components": {
            "schemas": schemas,
            "securitySchemes": {"ApiKeyAuth": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"ApiKeyAuth": []}],
    }
    doc = _json_schema_2020(doc)
    _adjust(doc)
    return doc


def _json_schema_2020(node: Any) -> Any:
    """Rewrite the OpenAPI 3.0 keywords the extract still mixes in as JSON Schema 2020-12.

    ``nullable: true`` becomes ``anyOf: [..., {type: null}]``; the boolean form of
    ``exclusiveMinimum`` (with ``minimum``) becomes the numeric one. A 2020-12 validator
    would ignore the first and misread the second (``true`` compares as ``1``).
    """
    if isinstance(node, list):
        return [_json_schema_2020(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _json_schema_2020(value) for key, value in node.items()}
    for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(out.get(bound), bool) and out.pop(bound):
            out[bound] = out.pop(limit)
    nullable = out.get("nullable")
    if isinstance(nullable, bool):
        del out["nullable"]
        if nullable:
            return {"anyOf": [out, {"type": "null"}]}
    return out


def _adjust(doc: dict[str, Any]) -> None:
    """Everything this suite reads differently from OpenAI's text, in one place.

    docs/api.md explains each item for API users.
    """
    schemas = doc["components"]["schemas"]

    # Known gap (reference README): POST /fine_tuning/jobs/{id}/pause answers `paused`, but the
    # status enum of FineTuningJob lacks it.
    schemas["FineTuningJob"]["properties"]["status"]["enum"].append("paused")

    # The spec types an event's `data` as an object, but its own listFineTuningEvents example
    # (like OpenAI's servers) sends `"data": null` for plain message events.
    _allow_null(schemas["FineTuningJobEvent"]["properties"], "data")

    # An empty file list has no first or last id: OpenAI sends null there, as the spec itself
    # allows for the checkpoint list, while ListFilesResponse says string.
    for field in ("first_id", "last_id"):
        _allow_null(schemas["ListFilesResponse"]["properties"], field)

    # The extract declares only 200 answers, yet every OpenAI error comes as one envelope.
    # Declare it as each operation's `default`, with exactly the four fields the SDK reads.
    schemas["OpenftErrorResponse"] = {
        "type": "object",
        "required": ["error"],
        "additionalProperties": False,
        "properties": {"error": {
            "$ref": "#/components/schemas/Error",
            "propertyNames": {"enum": list(ERROR_FIELDS)},
        }},
    }
    error = {"description": "Error", "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/OpenftErrorResponse"}}}}
    for ops in doc["paths"].values():
        for method in _METHODS:
            if method in ops:
                ops[method]["responses"].setdefault("default", error)


def _allow_null(properties: dict[str, Any], name: str) -> None:
    properties[name] = {"anyOf": [properties[name], {"type": "null"}]}


@functools.cache
def _registry() -> Registry:
    return Registry().with_resource(_URI, DRAFT202012.create_resource(_document()))


def _pointer(*parts: str) -> str:
    return "/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def _shape(path: str) -> tuple[str, ...]:
    """``/v1/models/{model_id:path}`` and ``/models/{model}`` both -> ('v1', 'models', '{}')."""
    if not path.startswith(PREFIX + "/"):
        path = PREFIX + path
    return tuple("{}" if re.fullmatch(r"\{[^}]*\}", seg) else seg
                 for seg in path.strip("/").split("/"))


def find_operation(method: str, path_template: str) -> tuple[str, dict[str, Any]]:
    """The spec's path key and operation object for a route; KeyError when the spec lacks it."""
    shape = _shape(path_template)
    for path, ops in _document()["paths"].items():
        if _shape(path) == shape and method.lower() in ops:
            return path, ops[method.lower()]
    raise KeyError(f"{method.upper()} {path_template} is not in OpenAI's spec")


def template_of(method: str, path: str) -> str | None:
    """The spec's path template a concrete request path (``/v1/models/ft:a:b::c``) falls
    under, literal segments winning over parameters; ``None`` when the spec has none."""
    concrete = _shape(path)
    best: tuple[int, str] | None = None
    for template, ops in _document()["paths"].items():
        shape = _shape(template)
        if method.lower() not in ops or len(shape) != len(concrete):
            continue
        if all(t in ("{}", c) for t, c in zip(shape, concrete, strict=True)):
            literal = sum(t != "{}" for t in shape)
            if best is None or literal > best[0]:
                best = (literal, template)
    return best[1] if best else None


def validate_response(method: str, path_template: str, status: int, json_body: Any) -> None:
    """Raise AssertionError unless ``json_body`` is what the spec declares for this answer.

    A status the operation does not list falls back to its ``default`` (the error envelope);
    an undeclared 2xx or 3xx fails. ``path_template`` may carry the app's parameter names.
    """
    path, op = find_operation(method, path_template)
    responses = op["responses"]
    key = str(status) if str(status) in responses else f"{status // 100}XX"
    if key not in responses:
        assert status >= 400, f"{method.upper()} {path} does not declare status {status}"
        key = "default"
    content = responses[key].get("content", {})
    assert "application/json" in content, (
        f"{method.upper()} {path} {key} declares no JSON body, got {json_body!r}")
    pointer = _pointer("paths", path, method.lower(), "responses", key, "content",
                       "application/json", "schema")
    validator = Draft202012Validator({"$ref": f"{_URI}#{pointer}"}, registry=_registry())
    errors = sorted(validator.iter_errors(json_body), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"  at {'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                 for e in errors[:10]]
        raise AssertionError(f"{method.upper()} {path} -> {status} breaks OpenAI's spec:\n"
                             + "\n".join(lines) + f"\nbody: {json_body!r}")
