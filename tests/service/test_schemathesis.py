"""Requests generated from OpenAI's spec, sent to the app in-process: no 5xx, answers in spec.

The schema is ``openai_spec.openapi_document()`` cut down to the operations the app serves
(taken from its routes, so a new route joins the run by itself). Each operation gets a few
valid (positive) and invalid (negative) requests; path parameters are either generated or the
ids of a real file, job and model, so happy paths are exercised as well as 404s. Multipart
uploads need no custom strategy: schemathesis encodes the `file` part itself.
"""

from __future__ import annotations

import os
import re

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance
from schemathesis.python.asgi import get_client

from tests.service.openai_spec import openapi_document
from tests.service.test_files_and_auth import upload

METHODS = ("get", "put", "post", "delete", "patch")
# Requests per operation and generation mode: the run stays within a few seconds per database.
# Raise it for a deeper local run (150 takes about a minute per database).
MAX_EXAMPLES = int(os.environ.get("OPENFT_FUZZ_EXAMPLES", "8"))


def _shape(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path)


def served_document(app) -> dict:
    """The spec's paths restricted to the (method, path) pairs the app has a route for."""
    served = {(method.lower(), _shape(route.path))
              for route in app.routes for method in getattr(route, "methods", ())}
    doc = openapi_document()
    paths = {}
    for path, ops in doc["paths"].items():
        kept = {k: v for k, v in ops.items()
                if k not in METHODS or (k, _shape(path)) in served}
        if any(k in METHODS for k in kept):
            paths[path] = kept
    doc["paths"] = paths
    return doc


@pytest.fixture
def known_ids(client, as_a) -> dict[str, str]:
    """Path parameters that name something: a file and a job of organization A, a model."""
    file_id = upload(client, as_a).json()["id"]
    job = client.post("/v1/fine_tuning/jobs", headers=as_a,
                      json={"model": "tiny-llama", "training_file": file_id}).json()
    return {"file_id": file_id, "fine_tuning_job_id": job["id"], "model": "tiny-llama"}


def operations(doc: dict):
    schema = schemathesis.openapi.from_dict(doc)
    for result in schema.get_all_operations():
        yield result.ok()


def test_generated_requests_get_answers_in_spec(client, app, as_a, known_ids):
    # The client fixture's lifespan built app.state. Used without `with`, this session reaches
    # the app in-process and starts no second lifespan.
    session = get_client(app)
    failures = []
    for operation in operations(served_document(app)):
        real = {p.name: known_ids[p.name] for p in operation.path_parameters
                if p.name in known_ids}
        for mode in GenerationMode:
            strategy = operation.as_strategy(mode)
            if real:
                strategy = strategy | operation.as_strategy(mode, path_parameters=real)

            @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck), phases=[Phase.generate])
            @given(case=strategy)
            def check(case):
                response = case.call(session=session, headers=as_a)
                case.validate_response(
                    response, checks=[not_a_server_error, response_schema_conformance])

            try:
                check()
            except Exception as exc:  # report every operation, not only the first to fail
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    session.close()
    assert not failures, "\n\n".join(failures)
