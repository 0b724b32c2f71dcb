"""Checkpoints, pause and resume of real runs: Ray Jobs API, Ray Train, DeepSpeed, SeaweedFS.

Same stack as ``test_driver.py``: two gloo workers, PEFT LoRA on the tiny Llama, 12 examples,
4 per optimizer step (3 steps per epoch).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from contract.bucket import adapter_prefix, checkpoint_key, checkpoint_model_key, control_key
from tests.training.runs import make_spec, of_type, read_events, start, submit, upload_pairs, wait

pytestmark = pytest.mark.slow

ADAPTER_FILES = ["adapter_config.json", "adapter_model.safetensors"]
TRAINING_EVENTS = ("metrics", "checkpoint")


def test_checkpoints_every_epoch_and_every_n_steps_and_resume_under_zero3(
    s3_server, ray_head, tiny_model_dir, tmp_path
):
    spec = make_spec(
        s3_server,
        tiny_model_dir,
        upload_pairs(s3_server),
        n_epochs=2,
        checkpoint_every_steps=2,
        zero_stage=3,
    )

    status, logs, _ = submit(ray_head, s3_server, spec)

    assert status == "SUCCEEDED", logs[-5000:]
    _, events = read_events(s3_server, spec.job_id)
    checkpoints = of_type(events, "checkpoint")
    # Epoch ends (3, 6) and every second step (2, 4, 6), each step once.
    assert [c["step"] for c in checkpoints] == [2, 3, 4, 6]
    metrics = {m["step"]: m for m in of_type(events, "metrics")}
    for c in checkpoints:
        name = checkpoint_model_key(spec.model_key, c["step"])
        assert c["checkpoint_key"] == checkpoint_key(spec.job_id, c["step"])
        assert c["adapter_key"] == adapter_prefix(name)
        assert c["model_key"] == name
        assert c["metrics"] == metrics[c["step"]]
    # Each checkpoint event comes right after the metrics of its step.
    order = [(e["type"], e["data"]["step"]) for e in events if e["type"] in TRAINING_EVENTS]
    for c in checkpoints:
        assert order[order.index(("checkpoint", c["step"])) - 1] == ("metrics", c["step"])
    assert events[-1]["type"] == "result"
    assert not of_type(events, "paused")

    s3 = s3_server.client()
    adapters = {c["step"]: load_adapter(s3_server, c["adapter_key"], tmp_path) for c in checkpoints}
    final = load_adapter(s3_server, spec.adapter_prefix, tmp_path)
    assert_same_tensors(adapters[6], final)  # the last checkpoint is the final model
    assert not same_tensors(adapters[2], adapters[6])  # and training moved between them
    assert_loads_with_peft(tiny_model_dir, s3_server, checkpoints[0]["adapter_key"], tmp_path)

    state = list_keys(s3, s3_server.bucket, checkpoint_key(spec.job_id, 3))
    assert any("/deepspeed/" in k for k in state), state
    assert sum("/rng/rank-" in k for k in state) == spec.hyperparameters.num_workers, state

    # Resume from the end of epoch 1: the steps after it repeat the run's own steps 4..6.
    resumed = spec.model_copy(update={"resume_from": checkpoint_key(spec.job_id, 3)})
    status, logs, _ = submit(ray_head, s3_server, resumed, attempt=1)

    assert status == "SUCCEEDED", logs[-5000:]
    _, events = read_events(s3_server, spec.job_id)
    after = of_type(events, "metrics")[len(metrics) :]
    assert [m["step"] for m in after] == [4, 5, 6]
    assert_same_losses(after, [metrics[step] for step in (4, 5, 6)])
    assert events[-1]["type"] == "result"

    # Resume from the last step (a run lost after its final checkpoint): nothing to train,
    # the run still ends on that checkpoint and settles with the final adapter.
    seen = len(events)
    last = spec.model_copy(update={"resume_from": checkpoint_key(spec.job_id, 6)})
    status, logs, _ = submit(ray_head, s3_server, last, attempt=2)

    assert status == "SUCCEEDED", logs[-5000:]
    _, events = read_events(s3_server, spec.job_id)
    new = events[seen:]
    assert not of_type(new, "metrics")
    assert [c["step"] for c in of_type(new, "checkpoint")] == [6]
    # The step-6 checkpoint now is the second run's (it trained 4..6 again): its metrics,
    # peak memory included, are that run's last metrics event.
    assert of_type(new, "checkpoint")[0]["metrics"] == after[-1]
    assert new[-1]["type"] == "result"
    assert_same_tensors(load_adapter(s3_server, spec.adapter_prefix, tmp_path / "again"), final)


def test_pause_then_resume_continues_like_an_uninterrupted_run(s3_server, ray_head, tiny_model_dir):
    """Pause via the control object, resume from the pause checkpoint, compare with a run
    that never stopped."""
    key = upload_pairs(s3_server)
    fields = dict(n_epochs=12, zero_stage=2)  # 36 steps: long enough to pause in the middle
    reference = make_spec(s3_server, tiny_model_dir, key, **fields)
    paused = make_spec(s3_server, tiny_model_dir, key, **fields)

    # The reference runs beside the others (the test head has 4 CPUs, a run takes 2).
    reference_run = start(ray_head, s3_server, reference)
    client, submission_id = start(ray_head, s3_server, paused)
    seen_step = wait_for_metrics(s3_server, paused.job_id)
    s3 = s3_server.client()
    s3.put_object(
        Bucket=s3_server.bucket, Key=control_key(paused.job_id), Body=b'{"action": "pause"}'
    )
    asked_at, asked_wall = time.monotonic(), time.time()
    status, logs = wait(client, submission_id)
    ended_in = time.monotonic() - asked_at

    assert status == "SUCCEEDED", logs[-5000:]
    _, events = read_events(s3_server, paused.job_id)
    assert not of_type(events, "result")
    [pause] = of_type(events, "paused")
    step = pause["step"]
    total_steps = 12 * 3
    assert 1 <= step < total_steps, step
    assert pause["checkpoint_key"] == checkpoint_key(paused.job_id, step)
    assert [m["step"] for m in of_type(events, "metrics")] == list(range(1, step + 1))
    assert of_type(events, "checkpoint")[-1]["step"] == step
    assert events[-1]["type"] == "paused"
    print(
        f"pause asked after step {seen_step} was reported, taken "
        f"at step {step}; paused event {events[-1]['created_at'] - asked_wall:+.0f}s (1 s "
        f"resolution), Ray job ended {ended_in:.1f}s after the control write"
    )

    # The API deletes the control object and submits the job again from the checkpoint.
    s3.delete_object(Bucket=s3_server.bucket, Key=control_key(paused.job_id))
    resumed = paused.model_copy(update={"resume_from": pause["checkpoint_key"]})
    status, logs, _ = submit(ray_head, s3_server, resumed, attempt=1)
    assert status == "SUCCEEDED", logs[-5000:]

    status, logs = wait(*reference_run)
    assert status == "SUCCEEDED", logs[-5000:]

    _, events = read_events(s3_server, paused.job_id)
    assert events[-1]["type"] == "result"
    assert any(e["message"].startswith(f"Training resumed after step {step}:") for e in events)
    metrics = of_type(events, "metrics")
    assert [m["step"] for m in metrics] == list(range(1, total_steps + 1))
    _, reference_events = read_events(s3_server, reference.job_id)
    assert_same_losses(metrics, of_type(reference_events, "metrics"))


# --- helpers -------------------------------------------------------------------------------


def assert_same_losses(metrics: list[dict], expected: list[dict]) -> None:
    """Bit for bit: the checkpoint restores every bit of state (fp32 LoRA master weights, Adam
    moments, LR-schedule step, RNG), the data order is a function of (seed, epoch, rank) only,
    and with one thread per worker and the same world size every reduction runs in the same
    order, so nothing is left to differ."""
    assert [m["step"] for m in metrics] == [m["step"] for m in expected]
    differences = {
        m["step"]: m["train_loss"] - e["train_loss"] for m, e in zip(metrics, expected, strict=True)
    }
    print("largest loss difference:", max(abs(d) for d in differences.values()))
    assert all(d == 0.0 for d in differences.values()), differences
    assert [m["train_mean_token_accuracy"] for m in metrics] == [
        e["train_mean_token_accuracy"] for e in expected
    ]


def wait_for_metrics(s3_server, job_id: str, timeout_s: float = 300) -> int:
    """Wait for the run's first metrics event; returns the last step reported so far."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _, events = read_events(s3_server, job_id)
        if metrics := of_type(events, "metrics"):
            return int(metrics[-1]["step"])
        time.sleep(0.2)
    raise TimeoutError(f"no metrics from {job_id} in {timeout_s}s")


def list_keys(s3, bucket: str, prefix: str) -> list[str]:
    return [item["Key"] for item in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]]


def download_adapter(s3_server, prefix: str, root: Path) -> Path:
    s3 = s3_server.client()
    assert sorted(k.removeprefix(prefix) for k in list_keys(s3, s3_server.bucket, prefix)) == (
        ADAPTER_FILES
    )
    out = root / prefix.strip("/").replace("/", "_")
    out.mkdir(parents=True, exist_ok=True)
    for name in ADAPTER_FILES:
        s3.download_file(s3_server.bucket, prefix + name, str(out / name))
    return out


def load_adapter(s3_server, prefix: str, root: Path) -> dict:
    from safetensors.torch import load_file

    folder = download_adapter(s3_server, prefix, root)
    tensors = load_file(folder / "adapter_model.safetensors")
    assert tensors and all(t.numel() > 0 for t in tensors.values()), tensors
    return tensors


def same_tensors(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def assert_same_tensors(a: dict, b: dict) -> None:
    assert same_tensors(a, b), sorted(a)


def assert_loads_with_peft(model_dir: Path, s3_server, prefix: str, root: Path) -> None:
    """PEFT loads the adapter onto the base model and takes exactly the saved weights."""
    import torch
    from peft import PeftModel, get_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    folder = download_adapter(s3_server, prefix, root)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny-llama"
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, folder)
    assert_same_tensors(
        get_peft_model_state_dict(model), load_file(folder / "adapter_model.safetensors")
    )
