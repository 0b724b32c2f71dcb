"""The recipe's options on real runs (Ray Jobs API, Ray Train, DeepSpeed, SeaweedFS): the
knobs, validation metrics, DPO and continued training.

Same stack as ``test_driver.py``: two gloo workers, the tiny Llama, 12 examples.
"""

from __future__ import annotations

import json
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

def download(s3_server, key: str, out: Path) -> Path:
    s3_server.client().download_file(s3_server.bucket, key, str(out))
    return out


@pytest.fixture(scope="module")
def knob_run(s3_server, ray_head, tiny_model_dir):
    """One run with a validation file and every supervised knob away from its default."""
    train_key = upload_lines(s3_server, [chat_line(c, city) for c, city in PAIRS])
    valid_key = upload_lines(s3_server, [chat_line(c, city) for c, city in VALID_PAIRS])
    spec = make_spec(
        s3_server, tiny_model_dir, train_key, validation_file_key=valid_key,
        n_epochs=3, eval_every_steps=2, lr_scheduler="cosine", warmup_ratio=0.0,
        gradient_checkpointing=True, packing=True, zero_stage=3,
        lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_target_modules=["q_proj", "v_proj"],
    )
    status, logs, _ = submit(ray_head, s3_server, spec)
    assert status == "SUCCEEDED", logs[-5000:]
    _, events = read_events(s3_server, spec.job_id)
    return spec, events


def test_validation_loss_at_intervals_and_over_the_whole_file_at_each_checkpoint(knob_run):
    spec, events = knob_run
    metrics = of_type(events, "metrics")
    steps = [m["step"] for m in metrics]
    assert steps == list(range(1, 10))
    with_valid = [m["step"] for m in metrics if "valid_loss" in m]
    assert with_valid == [2, 4, 6, 8, 9]  # every 2 steps, and the last
    for m in metrics:
        if "valid_loss" in m:
            assert m["valid_loss"] > 0 and 0 <= m["valid_mean_token_accuracy"] <= 1
    full = [m for m in metrics if "full_valid_loss" in m]
    assert [m["step"] for m in full] == [3, 6, 9]  # each epoch's checkpoint, the last included
    for m in full:
        assert m["full_valid_loss"] > 0 and 0 <= m["full_valid_mean_token_accuracy"] <= 1
    # The model as training found it, over the whole file, before the first step.
    types = [e["type"] for e in events]
    assert types.count("baseline") == 1 and types.index("baseline") < types.index("metrics")
    [base] = of_type(events, "baseline")
    assert base["full_valid_loss"] > 0 and 0 <= base["full_valid_mean_token_accuracy"] <= 1
    # Held-out capitals share the answer's shape: their loss falls as training goes on.
    assert full[-1]["full_valid_loss"] < base["full_valid_loss"]
    # Every checkpoint carries its step's metrics, the whole file's loss included.
    checkpoints = of_type(events, "checkpoint")
    assert [c["step"] for c in checkpoints] == [3, 6, 9]
    assert [c["metrics"]["full_valid_loss"] for c in checkpoints] == [
        m["full_valid_loss"] for m in full]


def test_lora_knobs_shape_the_saved_adapter(knob_run, s3_server, tmp_path):
    spec, _ = knob_run
    config = json.loads(download(s3_server, spec.adapter_prefix + "adapter_config.json",
                                 tmp_path / "config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"]

    from safetensors.torch import load_file

    tensors = load_file(download(s3_server, spec.adapter_prefix + "adapter_model.safetensors",
                                 tmp_path / "adapter.safetensors"))
    # ZeRO-3 gathered every shard before saving: nothing empty, only q and v adapted.
    assert tensors and all(t.numel() > 0 for t in tensors.values())
    assert {name.split(".")[-3] for name in tensors} == {"q_proj", "v_proj"}
    assert all(4 in t.shape for t in tensors.values())


def test_continued_training_starts_from_the_fine_tuned_adapter(knob_run, s3_server, ray_head,
                                                              tiny_model_dir, tmp_path):
    spec, events = knob_run
    first = of_type(events, "metrics")
    more = make_spec(
        s3_server, tiny_model_dir, spec.training_file_key, n_epochs=1,
        init_adapter_key=spec.adapter_prefix, learning_rate=1e-9,
        lora_r=16,  # ignored: the adapter's own settings win
    )
    status, logs, _ = submit(ray_head, s3_server, more)

    assert status == "SUCCEEDED", logs[-5000:]
    _, new_events = read_events(s3_server, more.job_id)
    again = of_type(new_events, "metrics")
    # With a learning rate too small to move anything, the run scores the data like the end
    # of the first run did, not like its start (a zero-initialised adapter scores the same
    # first step as the base model: first[0]).
    assert again[0]["train_loss"] < first[0]["train_loss"] - 0.25
    assert again[0]["train_loss"] == pytest.approx(
        sum(m["train_loss"] for m in first[-3:]) / 3, abs=0.15)

    from tests.training.test_checkpoints import load_adapter

    before = load_adapter(s3_server, spec.adapter_prefix, tmp_path / "before")
    after = load_adapter(s3_server, more.adapter_prefix, tmp_path / "after")
    # The same rank-4 q/v adapter, not a fresh rank-16 one.
    assert {k: v.shape for k, v in before.items()} == {k: v.shape for k, v in after.items()}


def preference_line(country: str, city: str) -> str:
    """A preference a tiny model can learn across pairs: answer, rather than refuse."""
    return json.dumps({
        "input": {"messages": [{"role": "user", "content": f"What is the capital of {country}?"}]},
        "preferred_output": [{"role": "assistant", "content": f"The capital is {city}."}],
        "non_preferred_output": [{"role": "assistant", "content": "I do not know."}],
    })


def test_dpo_run_widens_the_preferred_over_rejected_margin(s3_server, ray_head, tiny_model_dir):
    lines = [preference_line(country, city) for country, city in PAIRS]
    spec = make_spec(s3_server, tiny_model_dir, upload_lines(s3_server, lines), method="dpo",
                     beta=0.1, n_epochs=4, learning_rate=5e-3)

    status, logs, _ = submit(ray_head, s3_server, spec)

    assert status == "SUCCEEDED", logs[-5000:]
    _, events = read_events(s3_server, spec.job_id)
    metrics = of_type(events, "metrics")
    assert [m["step"] for m in metrics] == list(range(1, 13))
    # The adapter starts at zero: policy == reference, loss log(2), no reward margin.
    assert metrics[0]["train_loss"] == pytest.approx(0.6931, abs=1e-3)
    assert metrics[0]["train_reward_margin"] == pytest.approx(0.0, abs=1e-4)
    # The policy's log-prob margin of preferred over rejected, minus the reference's (the
    # reward margin over beta): pairs differ in their raw margin, this starts at 0 for all.
    gained = [m["train_reward_margin"] / spec.hyperparameters.beta for m in metrics]
    assert sum(gained[-3:]) / 3 > sum(gained[:3]) / 3 + 1.0, [round(g, 2) for g in gained]
    assert metrics[-1]["train_reward_accuracy"] >= 0.75
    assert metrics[-1]["train_loss"] < 0.6
    assert events[-1]["type"] == "result"
    # Both answers of every pair are billed.
    assert of_type(events, "result")[0]["trained_tokens"] > 0


def test_full_finetune_saves_a_consolidated_model_under_zero3(s3_server, ray_head,
                                                             tiny_model_dir, tmp_path):
    spec = make_spec(s3_server, tiny_model_dir, upload_lines(
        s3_server, [chat_line(c, city) for c, city in PAIRS]), full_finetune=True,
        zero_stage=3, n_epochs=2, learning_rate=1e-3)

    status, logs, _ = submit(ray_head, s3_server, spec)

    assert status == "SUCCEEDED", logs[-5000:]
    _, events = read_events(s3_server, spec.job_id)
    # Checkpoints resume but are not servable: no adapter copy per checkpoint.
    assert [c["adapter_key"] for c in of_type(events, "checkpoint")] == [None, None]
    s3 = s3_server.client()
    keys = [o["Key"] for o in s3.list_objects_v2(
        Bucket=s3_server.bucket, Prefix=spec.adapter_prefix)["Contents"]]
    names = {k.removeprefix(spec.adapter_prefix) for k in keys}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names, names
    out = tmp_path / "model"
    out.mkdir()
    for key in keys:
        s3.download_file(s3_server.bucket, key, str(out / key.removeprefix(spec.adapter_prefix)))

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tuned = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tuned_state, base_state = tuned.state_dict(), base.state_dict()
    assert tuned_state.keys() == base_state.keys()
    # Every shard was gathered: full-size tensors, and the weights moved from the base's.
    assert all(tuned_state[k].shape == base_state[k].shape for k in base_state)
    changed = [k for k in base_state if not torch.equal(tuned_state[k], base_state[k])]
    assert len(changed) > len(base_state) // 2, changed
    # The folder stands alone: its tokenizer renders the chat template.
    assert AutoTokenizer.from_pretrained(out).apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False)
