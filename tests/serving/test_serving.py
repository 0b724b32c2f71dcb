"""End to end: deploy with the real CLI into a real Ray head, query with the OpenAI SDK.

The base model is registered in the bucket (``service.base_models``), as on a cluster whose
nodes share no disk: the deploy driver names only its id, and the replica fetches it into its
node's cache. A LoRA adapter built here is uploaded to the real S3 server; the first request
that names it loads it into the running replica.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from tests.serving.lora import (
    AS_THE_API,
    MESSAGES,
    adapter_events,
    deployed,
    new_adapter,
    ray_env,
    serving_client,
)

pytestmark = pytest.mark.slow

BASE_ID = f"tiny-llama-{uuid.uuid4().hex[:6]}"
"""Unique per run: the node's cache starts without it, whatever earlier runs left."""
APP_NAME = "openft-serving-test"


@pytest.fixture(scope="module")
def adapter_key(tmp_path_factory, s3_server, tiny_model_dir) -> str:
    return new_adapter(s3_server, tiny_model_dir, tmp_path_factory.mktemp("adapter"))


@pytest.fixture(scope="module")
def second_adapter_key(tmp_path_factory, s3_server, tiny_model_dir) -> str:
    return new_adapter(s3_server, tiny_model_dir, tmp_path_factory.mktemp("adapter2"), seed=2)


@pytest.fixture(scope="module")
def node_cache(s3_server, tiny_model_dir) -> Iterator[Path]:
    """Register the tiny model in the bucket; yield where the Ray node caches it (the test
    head runs with this process's environment), removed afterwards."""
    from contract.base_models import node_cache_dir
    from service.base_models.service import register
    register(s3_server.blobs(), BASE_ID, tiny_model_dir)
    folder = node_cache_dir() / BASE_ID
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def serving_url(s3_server, ray_head, node_cache, adapter_key) -> Iterator[str]:
    """Deploy through ``python -m serving.deploy``; shut Serve down afterwards."""
    config = {
        "base_models": [{"id": BASE_ID}],  # registered in the bucket: no path anywhere
        "s3_bucket": s3_server.bucket,
        "app_name": APP_NAME,
        # Two slots for the two adapters of this module: the last slot gets occupied, which
        # is what test_base_answers_are_unchanged_when_batched_with_adapters needs.
        "max_adapters_per_replica": 2,
        "ready_timeout_s": 420,
    }
    with deployed(config, ray_head, s3_server) as url:
        yield url


@pytest.fixture(scope="module")
def client(serving_url: str) -> OpenAI:
    return serving_client(serving_url, timeout=120)


def _chat(client: OpenAI, model: str) -> str:
    response = client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=16, temperature=0
    )
    assert response.model == model
    return response.choices[0].message.content or ""


def test_models_lists_the_base_model(client: OpenAI) -> None:
    assert BASE_ID in {m.id for m in client.models.list().data}


def test_the_replica_serves_the_copy_it_fetched_into_its_nodes_cache(
        client: OpenAI, node_cache: Path, tiny_model_dir: Path) -> None:
    """Every file of the registered model is in the node's cache, byte for byte, and the
    engine answers from it."""
    assert _chat(client, BASE_ID).strip()
    registered = [p.relative_to(tiny_model_dir) for p in tiny_model_dir.rglob("*")
                  if p.is_file() and not p.name.startswith(".")]
    assert registered
    for name in registered:
        assert _sha256(node_cache / name) == _sha256(tiny_model_dir / name), name


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def base_answer(client: OpenAI) -> str:
    """The base model's answer before any adapter took a slot (first test of the module)."""
    return _chat(client, BASE_ID)


def test_base_model_answers_a_chat(base_answer: str) -> None:
    assert base_answer.strip()


def test_adapter_is_loaded_from_s3_on_first_use_and_changes_the_answer(
    client: OpenAI, adapter_key: str
) -> None:
    adapter_model = f"{BASE_ID}:{adapter_key}"
    base_text = _chat(client, BASE_ID)
    adapter_text = _chat(client, adapter_model)

    assert adapter_text.strip()
    assert adapter_text != base_text
    assert _chat(client, adapter_model) == adapter_text  # greedy and stable once loaded


def test_concurrent_first_requests_for_an_adapter_load_it_once(
    client: OpenAI, second_adapter_key: str, ray_head
) -> None:
    model = f"{BASE_ID}:{second_adapter_key}"
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda _: _chat(client, model), range(4)))

    assert len(set(answers)) == 1
    assert answers[0].strip()
    assert answers[0] != _chat(client, BASE_ID)
    # One replica, four simultaneous first requests: one download and registration.
    loads = [e for e in adapter_events(ray_head, APP_NAME) if e[1:] == (model, "loaded from S3")]
    assert len(loads) == 1, loads


def test_base_answers_are_unchanged_when_adapters_fill_every_slot(
    client: OpenAI, base_answer: str, adapter_key: str, second_adapter_key: str
) -> None:
    """Base answers stay the base model's once adapters take every slot, alone or batched.

    Stock vLLM on CPU reads the "no adapter" index -1 as the last adapter slot and gives base
    requests that adapter's answers; openft's CPU LoRA ops (``vllm_cpu.lora``) do not.
    """
    models = [BASE_ID, f"{BASE_ID}:{adapter_key}", f"{BASE_ID}:{second_adapter_key}"]
    alone = {m: _chat(client, m) for m in models}  # both adapters loaded: both slots taken
    assert alone[BASE_ID] == base_answer
    assert len(set(alone.values())) == 3

    mixed = [m for _ in range(4) for m in models]
    with ThreadPoolExecutor(max_workers=len(mixed)) as pool:
        answers = list(pool.map(lambda m: _chat(client, m), mixed))

    assert answers == [alone[m] for m in mixed]


def test_chat_streams_several_chunks(client: OpenAI, adapter_key: str) -> None:
    stream = client.chat.completions.create(
        model=f"{BASE_ID}:{adapter_key}",
        messages=MESSAGES,
        max_tokens=16,
        temperature=0,
        stream=True,
    )
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta]
    assert len([p for p in pieces if p]) >= 3
    assert "".join(p or "" for p in pieces).strip()


def test_stream_ends_with_done(serving_url: str) -> None:
    body = {"model": BASE_ID, "messages": MESSAGES, "max_tokens": 8, "stream": True}
    with httpx.stream("POST", f"{serving_url}/chat/completions", json=body, headers=AS_THE_API,
                      timeout=120) as r:
        assert r.status_code == 200
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert len(events) >= 3


ROUTES = [("GET", "/v1/models"), ("GET", f"/v1/models/{BASE_ID}"),
          ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"),
          ("POST", "/v1/embeddings"), ("POST", "/v1/audio/transcriptions"),
          ("POST", "/v1/score"), ("POST", "/tokenize"), ("POST", "/detokenize")]
"""Every route of Ray's ingress (``serving.ray_llm_private.ingress_routes``)."""


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer not-the-token"},
                                     {"Authorization": "Basic " + "x" * 20}],
                         ids=["no token", "wrong token", "not bearer"])
def test_serving_answers_only_the_api(serving_url: str, adapter_key: str, headers) -> None:
    """Serving speaks for every organization and lists every adapter in the bucket: without
    the API's serving token, every route is a 401 in OpenAI's envelope, before any model,
    adapter or listing is reached (issue 16)."""
    root = serving_url.removesuffix("/v1")
    bodies = {"/v1/chat/completions": {"model": f"{BASE_ID}:{adapter_key}", "max_tokens": 4,
                                       "messages": MESSAGES},
              "/v1/completions": {"model": BASE_ID, "prompt": "Hi", "max_tokens": 4}}
    with httpx.Client(base_url=root, headers=headers, timeout=60) as http:
        for method, path in ROUTES:
            r = http.request(method, path, json=bodies.get(path, {}))
            assert r.status_code == 401, (path, r.status_code, r.text)
            assert r.json()["error"]["code"] == "invalid_serving_token", (path, r.text)
            assert adapter_key not in r.text


def test_routes_the_api_never_calls_are_not_offered(serving_url: str) -> None:
    root = serving_url.removesuffix("/v1")
    with httpx.Client(base_url=root, headers=AS_THE_API, timeout=60) as http:
        for method, path in ROUTES[4:]:
            r = http.request(method, path, json={"model": BASE_ID, "input": "x"})
            assert r.status_code == 404, (path, r.text)
            assert r.json()["error"]["code"] == "unknown_url"
        listed = http.get("/v1/models").json()["data"]
    assert BASE_ID in {m["id"] for m in listed}


def test_completions_endpoint_answers(client: OpenAI, adapter_key: str) -> None:
    response = client.completions.create(
        model=f"{BASE_ID}:{adapter_key}", prompt="Hello", max_tokens=8, temperature=0
    )
    assert response.choices[0].text.strip()


def test_training_sized_placement_group_fits_beside_serving(
    serving_url: str, s3_server, ray_head
) -> None:
    """Serving must leave whole CPUs for a 2-worker training run (plus one spare) on 4."""
    script = (
        "import ray\n"
        "from ray.util.placement_group import placement_group, remove_placement_group\n"
        f"ray.init(address={ray_head.gcs_address!r}, logging_level='ERROR')\n"
        "pg = placement_group([{'CPU': 1}] * 3)\n"
        "ready = pg.wait(timeout_seconds=30)\n"
        "remove_placement_group(pg)\n"
        "raise SystemExit(0 if ready else 3)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=ray_env(s3_server),
        timeout=120,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", [f"{BASE_ID}:no-such-adapter", "no-such-base"])
def test_unknown_model_is_a_404_with_an_openai_error(
    client: OpenAI, model: str, stream: bool
) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=4, stream=stream)

    error = info.value.response.json()["error"]
    assert error["code"] == "model_not_found"
    assert error["message"]
