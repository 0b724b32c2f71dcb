"""A downloaded adapter is the model openft serves: loaded with PEFT on the base model, it
greedy-generates the same tokens as openft's serving for the same chat prompts (up to the
serving engine's rounding where two tokens tie).

One stack (``make run``'s launcher) trains a LoRA job on real Ray Train and serves it on vLLM's
CPU build; the model and each of its checkpoints are downloaded through
``GET /v1/models/{model}/download``, unpacked, and
run with transformers + PEFT on the tiny base model the stack serves (a volume-path base: the
fixture's folder is the stack's base model), rendering prompts with the downloaded tokenizer's
chat template.
"""

from __future__ import annotations

import json
import tarfile
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from devstack.stack import Stack
from tests.support.jobs import wait_for_terminal
from vllm_cpu.dtype import cpu_has_bf16_units

pytestmark = pytest.mark.slow

MAX_TOKENS = 12
SEED = 1
TRAINED = {"What is the capital of France?": "The capital of France is Paris.",
           "Say hello.": "Hello! How can I help you today?"}
PROMPTS = [[{"role": "user", "content": q}] for q in TRAINED] + [
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": "Extract the name as JSON."}]]  # never trained on


@pytest.fixture(scope="module")
def client(tiny_stack: Stack) -> OpenAI:
    return OpenAI(base_url=tiny_stack.base_url, api_key=tiny_stack.api_key, max_retries=0)


@pytest.fixture(scope="module")
def fine_tuned(client: OpenAI) -> list[str]:
    """The job's fine-tuned model and each of its checkpoints (one per epoch): the early
    ones half trained, their greedy answers still close to the base model's noise, where a
    wrong weight or scale would show."""
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in TRAINED.items()] * 8
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    uploaded = client.files.create(file=("chat.jsonl", data), purpose="fine-tune")
    # A fixed seed: a job without one draws its own (as OpenAI's do), and 48 steps on the
    # random tiny model leave some draws answering "Say hello." with the other answer (1 seed
    # in 6 tried; one CI run failed so). One worker on CPU repeats a seed's run exactly.
    job = client.fine_tuning.jobs.create(
        model="tiny-llama", training_file=uploaded.id, seed=SEED,
        hyperparameters={"n_epochs": 3, "learning_rate_multiplier": 5})
    job = wait_for_terminal(client, job.id, timeout=1200, every=2)
    assert job.status == "succeeded", job.error
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    return [job.fine_tuned_model, *(c.fine_tuned_model_checkpoint for c in checkpoints)]


def served(client: OpenAI, model: str, messages: list[dict]) -> tuple[list[int], str]:
    """The served greedy tokens (as ids: two detokenizers render a cut multi-byte character
    differently, vLLM's holds it back and HF's writes U+FFFD) and why they stopped."""
    out = client.chat.completions.create(
        model=model, messages=messages, max_tokens=MAX_TOKENS, temperature=0, logprobs=True,
        extra_body={"return_tokens_as_token_ids": True})  # vLLM's: "token_id:<id>"
    choice = out.choices[0]
    ids = [int(t.token.removeprefix("token_id:")) for t in choice.logprobs.content]
    assert len(ids) == out.usage.completion_tokens
    return ids, choice.finish_reason


def downloaded(stack: Stack, model: str, into: Path) -> Path:
    """The archive fetched as a user would (streamed to a file) and unpacked."""
    into.mkdir()
    archive = into / "model.tar.gz"
    with httpx.stream("GET", f"{stack.base_url}/models/{model}/download", timeout=120,
                      headers={"Authorization": f"Bearer {stack.api_key}"}) as resp:
        assert resp.status_code == 200, resp.read()
        with archive.open("wb") as f:
            for chunk in resp.iter_bytes():
                f.write(chunk)
    with tarfile.open(archive) as tar:
        (folder,) = {m.name.split("/")[0] for m in tar}
        tar.extractall(into, filter="data")
    return into / folder


def greedy_ids(model: Any, tokenizer: Any, messages: list[dict]) -> list[int]:
    """HF's greedy answer, as token ids."""
    import torch

    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=MAX_TOKENS, do_sample=False)
    return out[0, prompt["input_ids"].shape[1]:].tolist()


def off_greedy(model: Any, tokenizer: Any, messages: list[dict], answer: tuple[list[int], str],
               adapter: bool = True) -> list[tuple[int, float]]:
    """The steps (and logit gaps) where the served answer leaves HF's greedy path by more than
    the serving engine's rounding; a finish that disagrees with its tokens counts as step -1.

    HF runs in fp32, as a user loads it. Serving runs the engine in bf16 where the CPU has bf16
    units (vLLM's choice for `dtype: auto`), so on the random base model's near-ties the two
    can pick different tokens: on one AMX machine HF's top two logits at step 11 were 0.5584
    and 0.5574, a tie in bf16, and serving took the second. So each served token is judged on
    the served path (teacher-forced): it must be HF's greedy choice up to that rounding.
    """
    import torch

    eps = torch.finfo(torch.bfloat16 if cpu_has_bf16_units() else torch.float32).eps
    ids, finish = answer
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                           return_dict=True)["input_ids"]
    with torch.no_grad(), (nullcontext() if adapter else model.disable_adapter()):
        logits = model(torch.tensor([prompt + ids])).logits[0, len(prompt) - 1:-1]
    off = []
    for step, (row, token) in enumerate(zip(logits, ids, strict=True)):
        top = row.max()
        if (gap := float(top - row[token])) > 2 * eps * max(float(top.abs()), 1.0):
            off.append((step, gap))
    stopped = ids[-1] == tokenizer.eos_token_id
    if finish != ("stop" if stopped else "length") or (not stopped and len(ids) != MAX_TOKENS):
        off.append((-1, 0.0))
    return off


def test_downloaded_adapter_generates_what_serving_answers(
        tiny_stack: Stack, client: OpenAI, fine_tuned: list[str], tiny_model_dir: Path,
        tmp_path: Path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for i, name in enumerate(fine_tuned):
        folder = downloaded(tiny_stack, name, tmp_path / str(i))
        assert {"adapter_config.json", "adapter_model.safetensors", "chat_template.jinja",
                "tokenizer.json", "README.md"} <= {p.name for p in folder.iterdir()}
        tokenizer = AutoTokenizer.from_pretrained(folder)  # and its chat template
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        model = PeftModel.from_pretrained(base, folder).eval()
        for messages in PROMPTS:
            answer = served(client, name, messages)
            assert off_greedy(model, tokenizer, messages, answer) == [], (name, messages, answer)
        if i == 0:  # the final model learned its answers; without the adapter, the base's
            assert [tokenizer.decode(greedy_ids(model, tokenizer, p), skip_special_tokens=True)
                    for p in PROMPTS[:2]] == list(TRAINED.values())
            answer = served(client, "tiny-llama", PROMPTS[0])
            assert off_greedy(model, tokenizer, PROMPTS[0], answer, adapter=False) == [], answer
