"""The training driver, submitted through Ray's Jobs API exactly as the service submits it.

Real SeaweedFS, a real local Ray head, Ray Train with two gloo workers, DeepSpeed ZeRO-2 and
PEFT LoRA on the tiny Llama of ``devstack/tiny_model.py``.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest

from tests.training.runs import PAIRS, chat_line, make_spec, read_events, submit, upload_file

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_driver_trains_and_uploads_the_adapter(s3_server, ray_head, tiny_model_dir, zero_stage):
    key = upload_file(s3_server, [chat_line(c, city) for c, city in PAIRS])
    spec = make_spec(s3_server, tiny_model_dir, key, zero_stage=zero_stage)

    started = time.monotonic()
    status, logs, _ = submit(ray_head, s3_server, spec)
    print(f"ZeRO-{zero_stage} training job {status} in {time.monotonic() - started:.1f}s")

    assert status == "SUCCEEDED", logs[-5000:]
    assert "Traceback" not in logs, logs
    keys, events = read_events(s3_server, spec.job_id)
    assert [int(Path(k).stem) for k in keys] == list(range(len(keys)))

    metrics = [e["data"] for e in events if e["type"] == "metrics"]
    total_steps = 5 * (12 // 4)
    assert [m["step"] for m in metrics] == list(range(1, total_steps + 1))
    assert all(m["total_steps"] == total_steps for m in metrics)
    assert all(0.0 <= m["train_mean_token_accuracy"] <= 1.0 for m in metrics)
    losses = [round(m["train_loss"], 3) for m in metrics]
    print("losses", losses)
    # Steps see different examples: compare the first and last epochs, not single steps.
    assert sum(losses[-3:]) < sum(losses[:3]) - 1.0, losses

    assert events[0]["type"] == "message"
    result = events[-1]
    assert result["type"] == "result"
    assert result["data"]["model_key"] == spec.model_key
    assert result["data"]["trained_tokens"] > 0
    assert result["data"]["trained_tokens"] % spec.hyperparameters.n_epochs == 0

    s3 = s3_server.client()
    prefix = spec.adapter_prefix
    config = json.loads(
        s3.get_object(Bucket=s3_server.bucket, Key=prefix + "adapter_config.json")["Body"].read()
    )
    assert config["r"] == spec.hyperparameters.lora_r
    assert config["base_model_name_or_path"] == spec.base_model_id
    weights = s3.get_object(Bucket=s3_server.bucket, Key=prefix + "adapter_model.safetensors")
    tensors = load_safetensors(weights["Body"].read())
    lora_b = {name: t for name, t in tensors.items() if "lora_B" in name}
    assert lora_b, sorted(tensors)
    assert all(t.shape[-1] == spec.hyperparameters.lora_r and t.abs().sum() > 0
               for t in lora_b.values())

    listing = s3.list_objects_v2(Bucket=s3_server.bucket, Prefix=spec.checkpoints_prefix + "/")
    checkpoint_keys = [item["Key"] for item in listing.get("Contents", [])]
    assert any(k.endswith("/adapter_model.safetensors") for k in checkpoint_keys), checkpoint_keys


@pytest.mark.parametrize("param", ["training_file", "validation_file"])
def test_bad_line_fails_the_job_with_an_error_event(s3_server, ray_head, tiny_model_dir, param):
    """Before any worker starts, in either file: a worker's own failure would reach the user
    as the service's error, without the line."""
    good = [chat_line(c, city) for c, city in PAIRS]
    bad = list(good)
    bad[2] = "{this is not json"
    files = {"training_file": good, "validation_file": good, param: bad}
    spec = make_spec(s3_server, tiny_model_dir, upload_file(s3_server, files["training_file"]),
                     validation_file_key=upload_file(s3_server, files["validation_file"]))

    status, logs, _ = submit(ray_head, s3_server, spec)

    assert status == "FAILED", logs[-3000:]
    _, events = read_events(s3_server, spec.job_id)
    errors = [e for e in events if e["type"] == "error"]
    assert len(errors) == 1, events
    assert errors[0]["data"]["code"] == "invalid_training_file"
    assert errors[0]["data"]["param"] == param
    assert "line 3" in errors[0]["data"]["message"].lower()
    assert ("validation file" in errors[0]["data"]["message"].lower()) == (
        param == "validation_file")
    assert not any(e["type"] in ("result", "metrics") for e in events)


def test_a_worker_failure_fails_the_job_with_server_error(s3_server, ray_head, tmp_path):
    key = upload_file(s3_server, [chat_line(c, city) for c, city in PAIRS])
    spec = make_spec(s3_server, tmp_path / "no-such-model", key)

    status, logs, _ = submit(ray_head, s3_server, spec)

    assert status == "FAILED", logs[-3000:]
    keys, events = read_events(s3_server, spec.job_id)
    assert [int(Path(k).stem) for k in keys] == list(range(len(keys)))
    assert [e["type"] for e in events] == ["message", "error"]
    assert events[-1]["data"]["code"] == "server_error"
    assert events[-1]["data"]["message"].startswith("Training failed: ")


def load_safetensors(blob: bytes) -> dict:
    from safetensors.torch import load

    return load(io.BytesIO(blob).getvalue())
