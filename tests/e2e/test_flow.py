"""The whole product, from outside: ``make run``'s launcher, then the official ``openai`` SDK.

Upload chat JSONL -> fine-tuning job on real Ray Train + DeepSpeed ZeRO-2 (2 CPU workers) with
PEFT LoRA -> ``succeeded`` -> the adapter is in SeaweedFS -> the fine-tuned model answers on
the same base URL (vLLM CPU build under Ray Serve) differently from its base -> a second run
of the launcher on the same data dir still has the files, the job and the model.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import boto3
import httpx
import pytest
from openai import BadRequestError, NotFoundError, OpenAI

from contract.bucket import adapter_prefix
from tests.e2e.conftest import StackRunner
from tests.service.openai_spec import template_of, validate_response
from tests.support.jobs import wait_for_terminal

pytestmark = pytest.mark.slow

ANSWER = "The capital of France is Paris."
PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


def training_file(n: int = 12) -> bytes:
    rows = [{"messages": [{"role": "system", "content": "You answer geography questions."},
                          *PROMPT, {"role": "assistant", "content": ANSWER}]}] * n
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


class SpecCheck:
    """An httpx response hook: every JSON answer of a path in OpenAI's spec (files,
    fine-tuning, models) is validated against it while the real flow runs."""

    def __init__(self) -> None:
        self.checked: set[tuple[str, str]] = set()

    def __call__(self, response: httpx.Response) -> None:
        response.read()
        if "application/json" not in response.headers.get("content-type", ""):
            return
        method, path = response.request.method, response.request.url.path
        template = template_of(method, path)
        if template is None:
            return  # chat and completions: not in the reference spec
        validate_response(method, template, response.status_code, response.json())
        self.checked.add((method, template))


def greedy(client: OpenAI, model: str) -> str:
    out = client.chat.completions.create(model=model, messages=PROMPT, max_tokens=12,
                                         temperature=0)
    assert out.model == model  # the public name comes back, never the internal one
    return out.choices[0].message.content or ""


def test_upload_train_serve_and_restart(tiny_stacks: StackRunner):
    spec_check = SpecCheck()
    first = tiny_stacks.start()  # shared with the other modules
    client = OpenAI(base_url=first.base_url, api_key=first.api_key, max_retries=0,
                    http_client=httpx.Client(event_hooks={"response": [spec_check]}))
    assert "tiny-llama" in [m.id for m in client.models.list()]
    base_answer = greedy(client, "tiny-llama")

    uploaded = client.files.create(file=("geo.jsonl", training_file()), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="tiny-llama", training_file=uploaded.id, suffix="geo",
        hyperparameters={"n_epochs": 4, "learning_rate_multiplier": 20},
    )
    job = wait_for_terminal(client, job.id, timeout=1200, every=2)
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    assert job.status == "succeeded", (job.error, [e.message for e in events][:10])
    model_key = job.fine_tuned_model[-12:]  # the id part; the adapter's folder in the bucket
    assert job.fine_tuned_model == f"ft:tiny-llama:personal:geo:{model_key}"
    assert job.trained_tokens and job.trained_tokens > 0
    assert job.result_files and job.finished_at

    messages = [e.message for e in events]
    assert any("started" in m for m in messages) and any("completed" in m for m in messages)
    metrics = [e.data for e in events if e.type == "metrics"]
    assert metrics and all("train_loss" in m and "step" in m for m in metrics)
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints[0].fine_tuned_model_checkpoint.startswith(job.fine_tuned_model)
    # base64, as OpenAI serves result files (cookbook code decodes them)
    content = client.files.content(job.result_files[0]).content
    results = base64.b64decode(content).decode().splitlines()
    assert results[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"

    # The adapter objects are in the bucket under the job's model key.
    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{first.env['OPENFT_S3_PORT']}",
                      aws_access_key_id="openft", aws_secret_access_key="openft-secret",
                      region_name="us-east-1")
    listed = s3.list_objects_v2(Bucket="openft", Prefix=adapter_prefix(model_key))
    keys = {o["Key"].rsplit("/", 1)[-1] for o in listed.get("Contents", [])}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= keys

    # Hot-loaded on first use, no restart: the answer moves away from the base model's.
    tuned_answer = greedy(client, job.fine_tuned_model)
    assert tuned_answer != base_answer
    chunks = list(client.chat.completions.create(
        model=job.fine_tuned_model, messages=PROMPT, max_tokens=8, temperature=0,
        stream=True))
    assert len(chunks) > 1 and {c.model for c in chunks} == {job.fine_tuned_model}
    with pytest.raises(NotFoundError):
        greedy(client, job.fine_tuned_model.replace(":geo:", ":other:"))
    # Every checkpoint is servable by its own name (the earliest is an epoch-1 adapter).
    steps = [c.step_number for c in checkpoints]
    assert len(steps) == 4 and steps == sorted(steps, reverse=True)  # one per epoch
    greedy(client, checkpoints[-1].fine_tuned_model_checkpoint)
    model_name, file_id, job_id = job.fine_tuned_model, uploaded.id, job.id
    # Every answer above that OpenAI's spec describes conformed to it, live run included.
    job_path = "/v1/fine_tuning/jobs/{fine_tuning_job_id}"
    assert {"/v1/files", "/v1/fine_tuning/jobs", job_path, f"{job_path}/events",
            f"{job_path}/checkpoints", "/v1/models"} <= {
                template for _, template in spec_check.checked}, spec_check.checked
    stopped = tiny_stacks.stop()
    assert stopped is not None and stopped.launcher_pid == first.launcher_pid
    assert stopped.leftovers == []  # SIGTERM to the launcher stopped every process it started
    assert not Path(f"/tmp/openft-ray-{first.launcher_pid}").exists()  # nor left temp files

    # A second run on the same data dir finds what the first one made.
    stack = tiny_stacks.start()  # the later modules go on using it
    client = OpenAI(base_url=stack.base_url, api_key=stack.api_key, max_retries=0)
    assert client.files.retrieve(file_id).bytes == len(training_file())
    assert client.fine_tuning.jobs.retrieve(job_id).status == "succeeded"
    assert model_name in [m.id for m in client.models.list()]
    assert greedy(client, model_name) == tuned_answer

    # A prompt longer than the context is the server's 400 in OpenAI's envelope, and
    # the model still answers afterwards.
    with pytest.raises(BadRequestError):
        client.chat.completions.create(
            model=model_name, max_tokens=4,
            messages=[{"role": "user", "content": "capital " * 5000}])
    assert greedy(client, model_name) == tuned_answer

    # Deleted: gone from the list and answering 404, base model untouched.
    assert client.models.delete(model_name).deleted is True
    assert model_name not in [m.id for m in client.models.list()]
    with pytest.raises(NotFoundError):
        greedy(client, model_name)
    assert greedy(client, "tiny-llama") == base_answer
