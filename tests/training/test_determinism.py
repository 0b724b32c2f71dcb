"""Same file, seed and settings, same model: on one worker and on two, a run repeated gives
the same losses at every step, the same held-out losses and the same held-out answers.

Real runs as the service starts them (spec in SeaweedFS, the driver through Ray's Jobs API,
Ray Train with gloo workers, DeepSpeed, PEFT) on the tiny Llama, with LoRA dropout on so the
seed has randomness to govern beyond the shuffle and the adapter's initialisation. A run with
another seed must differ, or the equalities would hold for a seed nobody reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.training.runs import (
    PAIRS,
    VALID_PAIRS,
    chat_line,
    make_spec,
    of_type,
    read_events,
    submit,
)
from tests.training.runs import upload_file as upload_lines

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Outcome:
    """What a user compares between two runs: the curves, and the model's held-out answers."""

    train_losses: list[float]
    full_valid_losses: list[float]
    answers: list[str]
    adapter: dict[str, bytes]


@pytest.fixture(scope="module")
def files(s3_server) -> tuple[str, str]:
    return (upload_lines(s3_server, [chat_line(c, city) for c, city in PAIRS]),
            upload_lines(s3_server, [chat_line(c, city) for c, city in VALID_PAIRS]))


@pytest.fixture(scope="module")
def run(s3_server, ray_head, tiny_model_dir, files, tmp_path_factory):
    def run_once(seed: int, workers: int) -> Outcome:
        train_key, valid_key = files
        spec = make_spec(s3_server, tiny_model_dir, train_key, validation_file_key=valid_key,
                         seed=seed, num_workers=workers, batch_size=4, n_epochs=2,
                         lora_dropout=0.1, learning_rate=5e-3)
        status, logs, _ = submit(ray_head, s3_server, spec)
        assert status == "SUCCEEDED", logs[-5000:]
        _, events = read_events(s3_server, spec.job_id)
        metrics = of_type(events, "metrics")
        folder = tmp_path_factory.mktemp(f"adapter-{seed}-{workers}")
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            s3_server.client().download_file(s3_server.bucket, spec.adapter_prefix + name,
                                             str(folder / name))
        return Outcome([m["train_loss"] for m in metrics],
                       [m["full_valid_loss"] for m in metrics if "full_valid_loss" in m],
                       held_out_answers(tiny_model_dir, folder), tensors(folder))

    return run_once


def held_out_answers(base_dir: Path, adapter_dir: Path) -> list[str]:
    """Greedy answers of the trained adapter to the held-out questions (as a user scores)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    answers = []
    for country, _ in VALID_PAIRS[:4]:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": f"What is the capital of {country}?"}],
            add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model.generate(**prompt, max_new_tokens=10, do_sample=False)
        answers.append(tokenizer.decode(out[0, prompt["input_ids"].shape[1]:]))
    return answers


def tensors(folder: Path) -> dict[str, tuple[str, bytes]]:
    """Each saved tensor's dtype and raw bytes. Through a ``uint8`` view: on a CPU with bf16
    (AVX-512 BF16 or AMX) the adapter is saved in bf16, which numpy has no type for."""
    import torch
    from safetensors.torch import load_file

    return {name: (str(t.dtype), t.contiguous().view(torch.uint8).numpy().tobytes())
            for name, t in load_file(folder / "adapter_model.safetensors").items()}


@pytest.mark.parametrize("workers", [1, 2])
def test_a_run_repeated_with_its_seed_gives_the_same_model(run, workers):
    first, again = run(seed=7, workers=workers), run(seed=7, workers=workers)

    assert len(first.train_losses) == 6 and len(first.full_valid_losses) == 2  # 2 epochs of 3
    assert again.train_losses == first.train_losses
    assert again.full_valid_losses == first.full_valid_losses
    assert again.answers == first.answers
    assert again.adapter == first.adapter  # bit for bit
    if workers == 1:  # the seed is what they share: another one trains another model
        other = run(seed=8, workers=workers)
        assert other.train_losses != first.train_losses
        assert other.adapter != first.adapter
