"""Two engine replicas: adapters load per replica from S3, leave by LRU or deletion (issue 5).

The deployment is small on purpose: each replica holds ONE adapter and takes ONE request at a
time (``max_ongoing_requests=1``). That makes routing to a chosen replica deterministic
without any private Ray API: a long streamed request occupies one replica, so the next request
must go to the other one (``on_each_replica``). Each answer's ``system_fingerprint`` names the
replica that gave it, so the tests check that both really answered.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TypeVar

import httpx
import openai
import pytest
from openai import OpenAI

from contract.bucket import deleted_marker_key
from tests.serving.lora import (
    AS_THE_API,
    MESSAGES,
    adapter_events,
    answer,
    deployed,
    new_adapter,
    replica_id,
    serving_client,
)

pytestmark = pytest.mark.slow

BASE_ID = "tiny-llama"
APP_NAME = "openft-serving-lifecycle-test"
MAX_MODEL_LEN = 16384
"""This module's tiny model has a long context so that a busy stream (``MAX_MODEL_LEN - 64``
tokens) outlasts every routing step of ``on_each_replica``. 4096 tokens took about 10 s on an
Intel Xeon, short enough to end on its own while a step waited, freeing its replica early."""
ADAPTER_RECHECK_S = 1.0
"""How stale a replica's knowledge of an adapter in S3 may be (``adapter_recheck_s``)."""
T = TypeVar("T")


@pytest.fixture(scope="module")
def long_context_model_dir(tmp_path_factory) -> Path:
    from devstack.tiny_model import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-long"), context=MAX_MODEL_LEN)


@pytest.fixture(scope="module")
def upload(tmp_path_factory, s3_server, long_context_model_dir) -> Callable[[int], str]:
    """Build an adapter with ``seed`` and put it in S3 under a fresh key; return the key."""

    def _upload(seed: int) -> str:
        return new_adapter(s3_server, long_context_model_dir, tmp_path_factory.mktemp("a"),
                           seed=seed)

    return _upload


@pytest.fixture(scope="module")
def serving_url(s3_server, ray_head, long_context_model_dir) -> Iterator[str]:
    config = {
        "base_models": [{"id": BASE_ID, "volume_path": str(long_context_model_dir)}],
        "s3_bucket": s3_server.bucket,
        "app_name": APP_NAME,
        "num_replicas": 2,
        "replica_cpus": 0.25,
        "max_ongoing_requests": 1,
        "max_adapters_per_replica": 1,
        "adapter_recheck_s": ADAPTER_RECHECK_S,
        "max_model_len": MAX_MODEL_LEN,
        "kv_cache_gib": 0.25,
        "ready_timeout_s": 420,
    }
    with deployed(config, ray_head, s3_server) as url:
        yield url


@pytest.fixture(scope="module")
def client(serving_url: str) -> OpenAI:
    return serving_client(serving_url)


@contextmanager
def busy_replica(serving_url: str) -> Iterator[None]:
    """Hold one replica with a long streamed completion until the block ends (then cancel).

    The stream is read all along, as a real client does: Ray Serve frees a replica's slot
    early when the client stops reading, and the next request could land on it.
    """
    body = {"model": BASE_ID, "prompt": "Hello", "max_tokens": MAX_MODEL_LEN - 64,
            "ignore_eos": True, "stream": True, "temperature": 0}
    started, stop = threading.Event(), threading.Event()

    def read() -> None:
        with httpx.Client(timeout=180, headers=AS_THE_API) as http, \
                http.stream("POST", f"{serving_url}/completions", json=body) as response:
            assert response.status_code == 200
            for _ in response.iter_lines():
                started.set()  # it is generating: that replica is full
                if stop.is_set():
                    return
        # Ended by itself: its replica was free for part of the block, routing not forced.
        raise AssertionError("the busy stream ended before the block did")

    with ThreadPoolExecutor(max_workers=1) as pool:
        reader = pool.submit(read)
        try:
            if not started.wait(timeout=180):
                reader.result(timeout=0)  # raises what went wrong in the reader, if anything
                pytest.fail("the busy stream sent nothing within 180 s")
            yield
        finally:
            stop.set()
        reader.result()


def on_each_replica(serving_url: str, call: Callable[[], T]) -> list[T]:
    """Run ``call`` once on each of the two replicas: the other one is kept busy meanwhile."""
    results = []
    with ExitStack() as first, ExitStack() as second:
        first.enter_context(busy_replica(serving_url))  # replica X
        second.enter_context(busy_replica(serving_url))  # replica Y: X is full
        first.close()
        results.append(call())  # only X is free
        first.enter_context(busy_replica(serving_url))  # X again: Y is full
        second.close()
        results.append(call())  # only Y is free
    return results


def chat(client: OpenAI, model: str) -> str:
    return answer(client, model)[0]


def test_fresh_adapter_is_loaded_from_s3_by_each_replica(
    client: OpenAI, serving_url: str, upload, ray_head
) -> None:
    base_text = chat(client, BASE_ID)
    model = f"{BASE_ID}:{upload(seed=11)}"  # uploaded after the replicas started

    (text_x, replica_x), (text_y, replica_y) = on_each_replica(
        serving_url, lambda: answer(client, model))

    assert replica_x != replica_y  # both replicas answered
    assert text_x == text_y
    assert text_x.strip() and text_x != base_text
    # ... each after fetching it from S3 itself, once
    loaded_by = [replica for replica, m, event in adapter_events(ray_head, APP_NAME)
                 if m == model and event == "loaded from S3"]
    assert sorted(loaded_by) == sorted({replica_id(replica_x), replica_id(replica_y)}), loaded_by


def test_adapters_under_different_keys_answer_differently(client: OpenAI, upload) -> None:
    """A re-trained model gets a new key: nothing of the old adapter can answer for it."""
    first, second = upload(seed=21), upload(seed=22)
    assert chat(client, f"{BASE_ID}:{first}") != chat(client, f"{BASE_ID}:{second}")


def test_lru_of_one_adapter_per_replica_reloads_an_evicted_adapter(
    client: OpenAI, upload, ray_head
) -> None:
    """Three adapters over two replicas holding one each: evictions happen, answers stay.

    Four rounds over the three: whichever replica Serve sends each new adapter to, some
    replica must then load an adapter it evicted before (three rounds have routings that
    avoid it, four do not)."""
    models = [f"{BASE_ID}:{upload(seed=s)}" for s in (31, 32, 33)]
    first = {m: chat(client, m) for m in models}
    for m in models * 3:
        assert chat(client, m) == first[m]
    assert len(set(first.values())) == 3

    # Some replica evicted one of them and later loaded it from S3 again.
    events = [e for e in adapter_events(ray_head, APP_NAME) if e[1] in models]
    evicted = {(replica, m) for replica, m, event in events
               if event == "unloaded: least recently used"}
    reloaded = [(replica, m) for replica, m in evicted
                if events.count((replica, m, "loaded from S3")) >= 2]
    assert reloaded, events


def test_deleted_adapter_answers_404_on_every_replica(
    client: OpenAI, serving_url: str, upload, s3_server
) -> None:
    key = upload(seed=41)
    model = f"{BASE_ID}:{key}"
    answers = on_each_replica(serving_url, lambda: answer(client, model))
    assert all(text.strip() for text, _ in answers)
    assert answers[0][1] != answers[1][1]  # both replicas hold it

    # What DELETE /v1/models/{ft name} does on the serving side: the weights stay in S3.
    s3_server.client().put_object(
        Bucket=s3_server.bucket, Key=deleted_marker_key(key), Body=b"{}"
    )
    # The promise is "gone everywhere within adapter_recheck_s": a replica that checked S3
    # less than that ago may still answer, so the assertions start once the period is over.
    time.sleep(ADAPTER_RECHECK_S + 0.1)

    def refused() -> dict:
        with pytest.raises(openai.NotFoundError) as info:
            chat(client, model)
        return info.value.response.json()["error"]

    for error in on_each_replica(serving_url, refused):
        assert error["code"] == "model_not_found"
    assert refused()["code"] == "model_not_found"  # and it stays gone


def test_sampling_parameters_and_usage_are_honoured(client: OpenAI) -> None:
    greedy = client.completions.create(model=BASE_ID, prompt="Hello", max_tokens=16,
                                       temperature=0, extra_body={"ignore_eos": True})
    text = greedy.choices[0].text
    assert greedy.choices[0].finish_reason == "length"
    assert greedy.usage.completion_tokens == 16
    assert greedy.usage.total_tokens == greedy.usage.prompt_tokens + 16

    stop = text[len(text) // 2:len(text) // 2 + 2]
    stopped = client.completions.create(model=BASE_ID, prompt="Hello", max_tokens=16,
                                        temperature=0, stop=[stop])
    assert stopped.choices[0].finish_reason == "stop"
    assert text.startswith(stopped.choices[0].text) and stop not in stopped.choices[0].text

    def sampled(seed: int):
        return client.chat.completions.create(model=BASE_ID, messages=MESSAGES, n=3,
                                              max_tokens=8, temperature=1.0, seed=seed)

    first, again = sampled(7), sampled(7)
    assert len(first.choices) == 3
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]
    assert all(c.finish_reason in ("length", "stop") for c in first.choices)
    assert 0 < first.usage.completion_tokens <= 3 * 8
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens

    n2 = client.completions.create(model=BASE_ID, prompt="Hello", n=2, max_tokens=4,
                                   temperature=1.0, seed=3)
    assert len(n2.choices) == 2 and n2.usage.completion_tokens <= 8


@pytest.mark.parametrize("path", ["chat/completions", "completions"])
def test_over_long_prompt_is_a_400_with_an_openai_error(serving_url: str, path: str) -> None:
    long_text = "hello " * (MAX_MODEL_LEN + 100)
    body = ({"messages": [{"role": "user", "content": long_text}]} if path.startswith("chat")
            else {"prompt": long_text})
    response = httpx.post(f"{serving_url}/{path}", json={"model": BASE_ID, "max_tokens": 4, **body},
                          headers=AS_THE_API, timeout=180)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["message"] and error["type"]
