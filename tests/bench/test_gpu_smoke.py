"""``bench/gpu_smoke.py``: its verdicts on a run, and the whole check in its CPU dry mode.

The dry run is what keeps the smoke check runnable between the days a GPU machine is lent:
every step but CUDA, on the real stack (SeaweedFS, Ray, the training driver, vLLM's CPU build).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.gpu_smoke import Run, judge_run, ready_lines
from contract.hyperparameters import Hyperparameters
from contract.spec import S3Location, TrainingSpec
from training.model_load import READY_LOG

ROOT = Path(__file__).resolve().parents[2]


def spec(zero_stage: int, workers: int) -> TrainingSpec:
    hp = Hyperparameters(n_epochs=1, batch_size=workers, learning_rate=1e-3, lora_r=8,
                         lora_alpha=16, max_seq_length=64, num_workers=workers,
                         zero_stage=zero_stage)
    return TrainingSpec(job_id="j", base_model_id="m", training_file_key="files/f",
                        model_key="k", hyperparameters=hp, seed=0,
                        s3=S3Location(endpoint_url="http://s3", bucket="b"))


def run(losses: list[float], ready: list[dict], zero_stage: int = 2, workers: int = 2,
        status: str = "SUCCEEDED") -> Run:
    metrics = [{"step": i + 1, "train_loss": loss, "peak_memory_gib": 1.5}
               for i, loss in enumerate(losses)]
    return Run("r", status, metrics, ready, spec(zero_stage, workers), logs="line\n")


BF16 = {"dtype": "bfloat16", "parameters": 100, "local_parameters": 50}


def test_the_ready_line_training_logs_is_what_the_smoke_check_reads():
    line = f'(RayTrainWorker pid=1) {READY_LOG} {json.dumps(BF16 | {"rank": 1})}'
    assert ready_lines(f"noise\n{line}\n") == [BF16 | {"rank": 1}]


def test_a_run_passes_when_the_loss_falls_in_bf16_and_zero3_partitioned():
    ok, detail = judge_run(run([3.0, 2.8, 1.2, 1.0], [BF16, BF16], zero_stage=3), dry=False)
    assert ok, detail
    assert "peak 1.50 GiB" in detail


@pytest.mark.parametrize("bad, says", [
    (run([1.0, 1.1, 1.2, 1.3], [BF16]), "loss did not fall"),
    (run([3.0, 2.0, 1.0, 0.5], [BF16 | {"dtype": "float32"}]), "expected bfloat16"),
    (run([3.0, 2.0, 1.0, 0.5], [BF16 | {"local_parameters": 100}], zero_stage=3),
     "not partitioned"),
    (run([3.0, 2.0], [], status="FAILED"), "run FAILED"),
    (run([3.0, 2.0, 1.0, 0.5], []), "no openft-model-ready line"),
])
def test_a_run_fails_the_check_and_says_why(bad, says):
    ok, detail = judge_run(bad, dry=False)
    assert not ok
    assert says in detail


def test_a_dry_run_accepts_fp32_where_the_cpu_has_no_bf16():
    ok, detail = judge_run(run([3.0, 2.0, 1.0, 0.5], [BF16 | {"dtype": "float32"}]), dry=True)
    assert ok, detail


def test_without_cuda_and_without_dry_it_refuses_at_once(tmp_path):
    done = subprocess.run([sys.executable, "-m", "bench.gpu_smoke", "--results-dir",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--dry" in done.stderr


@pytest.mark.slow
def test_the_dry_run_passes_every_check_on_this_cpu(tmp_path):
    """The whole smoke check but CUDA: real SeaweedFS, Ray, training driver and vLLM."""
    done = subprocess.run([sys.executable, "-m", "bench.gpu_smoke", "--dry", "--results-dir",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    report = json.loads((tmp_path / "gpu_smoke-dry.json").read_text())
    failed = [c for c in report["checks"] if not c["ok"]]
    assert done.returncode == 0 and not failed, (failed, done.stdout[-3000:])
    names = " / ".join(c["name"] for c in report["checks"])
    for step in ("ZeRO-2 LoRA", "ZeRO-3 LoRA", "ZeRO-3 full fine-tune", "DPO", "resume",
                 "same greedy tokens", "placed the replica"):
        assert step in names
