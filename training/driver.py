"""Entry point of a fine-tuning run, submitted by the API through the Ray Jobs API::

    python -m training.driver s3://<bucket>/jobs/<job_id>/spec.json

Setup (read the spec, check the training file and the checkpoint to resume from), train (Ray
Train ``TorchTrainer``; rank 0 writes metrics and checkpoint events and uploads the adapter),
settle (the ``result`` event once the adapter is in S3, the ``paused`` event when the run
stopped at a checkpoint because the API asked, or an ``error`` event), exit 0 on success or
pause and 1 on failure.

The driver and rank 0 take turns writing event batches (never at the same time), each
continuing the numbering it finds in S3.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.bucket import ADAPTER_FILES, ray_train_snapshot_key
from contract.chat_format import InvalidChatFile
from contract.events import (
    ErrorData,
    ErrorEvent,
    MessageEvent,
    PausedData,
    PausedEvent,
    ResultData,
    ResultEvent,
    TrainingEvent,
)
from contract.spec import TrainingSpec
from training import storage
from training.data import read_jsonl
from training.events import s3_event_writer
from training.trainer_state import TrainerState, state_key

log = logging.getLogger("training.driver")


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if len(argv) != 1:
        print(
            "usage: python -m training.driver s3://<bucket>/jobs/<job_id>/spec.json",
            file=sys.stderr,
        )
        return 2
    spec = read_spec(argv[0])
    code = run(spec, storage.client(spec.s3))
    log.info("run of %s finished with exit code %d", spec.job_id, code)
    return code


def read_spec(url: str) -> TrainingSpec:
    bucket, key = storage.split_s3_url(url)
    return TrainingSpec.model_validate_json(storage.read_bytes(storage.client(), bucket, key))


def run(spec: TrainingSpec, s3: Any) -> int:
    try:
        num_examples = check_files(spec, s3)
        started = started_message(spec, num_examples, resumed_step(spec, s3))
        announce(spec, s3, MessageEvent(message=started))
        outcome = fit(spec, s3)
        if not outcome.paused:
            confirm_adapter(spec, s3)
    except BadFile as e:
        return failed(spec, s3, ErrorData(code=e.error.code, param=e.param, message=e.message))
    except Exception as e:  # noqa: BLE001 - any other failure is the service's, not the user's
        log.exception("training failed")
        return failed(spec, s3, ErrorData(code="server_error", param=None, message=summary(e)))
    if outcome.paused:
        paused = PausedData(step=outcome.step, checkpoint_key=outcome.checkpoint_key)
        announce(spec, s3, PausedEvent(message=f"Training paused at step {outcome.step}",
                                       data=paused))
        return 0
    result = ResultData(trained_tokens=outcome.trained_tokens, model_key=spec.model_key)
    announce(spec, s3, ResultEvent(message="New fine-tuned model created", data=result))
    return 0


def started_message(spec: TrainingSpec, num_examples: int, step: int | None) -> str:
    n_epochs = spec.hyperparameters.n_epochs
    if step is None:
        return f"Training started: {num_examples} examples, {n_epochs} epochs"
    return f"Training resumed after step {step}: {num_examples} examples, {n_epochs} epochs"


def failed(spec: TrainingSpec, s3: Any, error: ErrorData) -> int:
    announce(spec, s3, ErrorEvent(message=error.message, data=error))
    return 1


def summary(error: BaseException) -> str:
    """One line for the user; the full traceback stays in the Ray job's logs.

    Ray Train wraps a worker's exception twice (``WorkerGroupError`` per rank, then the
    remote task error); the lowest rank's original exception says what went wrong.
    """
    failures = getattr(error, "worker_failures", None)
    if failures:
        error = failures[min(failures)]
    error = getattr(error, "cause", None) or error
    lines = str(error).strip().splitlines()
    return f"Training failed: {type(error).__name__}: {lines[0] if lines else ''}"[:500]


def announce(spec: TrainingSpec, s3: Any, event: TrainingEvent) -> None:
    """Write one event batch now. A fresh writer each time continues after rank 0's batches."""
    with s3_event_writer(s3, spec.s3.bucket, spec.job_id, background=False) as events:
        events.emit(event)


class BadFile(Exception):
    """A file of the run that the validator refuses, and the job parameter that named it."""

    def __init__(self, param: str, error: InvalidChatFile):
        self.param, self.error = param, error
        self.message = str(error) if param == "training_file" else f"Validation file: {error}"
        super().__init__(self.message)


def check_files(spec: TrainingSpec, s3: Any) -> int:
    """Fail fast, before any worker starts, on a line the service should have rejected, in
    the training file or the validation file (a worker's failure reaches the user as the
    service's error, not as the line of their file); the training examples' count."""
    files = {"training_file": spec.training_file_key, "validation_file": spec.validation_file_key}
    counts = {}
    for param, key in files.items():
        try:
            counts[param] = len(read_jsonl(spec, s3, key)) if key else 0
        except InvalidChatFile as e:
            raise BadFile(param, e) from e
    return counts["training_file"]


def resumed_step(spec: TrainingSpec, s3: Any) -> int | None:
    """The step ``resume_from`` continues after; fails fast when it is no checkpoint."""
    if spec.resume_from is None:
        return None
    key = state_key(spec.resume_from)
    if not storage.exists(s3, spec.s3.bucket, key):
        raise FileNotFoundError(f"resume_from {spec.resume_from!r} is no checkpoint: no {key}")
    return TrainerState.from_json(storage.read_bytes(s3, spec.s3.bucket, key)).step


@dataclass(frozen=True)
class Outcome:
    """How the workers ended, from the last checkpoint they reported to Ray Train."""

    paused: bool
    step: int
    checkpoint_key: str
    trained_tokens: int


def fit(spec: TrainingSpec, s3: Any) -> Outcome:
    """Run the workers until the end or a pause, Ray Train checkpoints in the job's prefix.

    Ray Train restarts the workers up to ``spec.max_failures`` times; every failure counts,
    one the user caused as well as a lost process.
    """
    # Imported here: they bring torch, seconds the driver need not spend before it has
    # checked the training file and said that the run started. The loop itself (DeepSpeed,
    # PEFT) only the workers import (training.worker_main).
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from training.worker_main import train_loop_per_worker

    run_dir = Path(spec.checkpoints_prefix)
    forget_earlier_runs(spec, s3)

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec.model_dump(mode="json")},
        scaling_config=ScalingConfig(**scaling(
            spec.hyperparameters.num_workers, spec.use_gpu, spec.cpus_per_worker)),
        torch_config=TorchConfig(backend="nccl" if spec.use_gpu else "gloo"),
        # Checkpoints land in jobs/{job_id}/checkpoints/step-{step:08d}/.
        run_config=RunConfig(
            name=run_dir.name,
            storage_path=f"{spec.s3.bucket}/{run_dir.parent}",
            storage_filesystem=storage.pyarrow_filesystem(spec.s3),
            # A worker lost mid-run (killed, OOM, node gone): Ray Train restarts the workers
            # from the last checkpoint this run reported (see starting_checkpoint).
            failure_config=FailureConfig(max_failures=spec.max_failures),
        ),
    )
    metrics = trainer.fit().metrics
    return Outcome(
        paused=bool(metrics["paused"]),
        step=int(metrics["step"]),
        checkpoint_key=str(metrics["checkpoint_key"]),
        trained_tokens=int(metrics["trained_tokens"]),
    )


def scaling(num_workers: int, use_gpu: bool, cpus_per_worker: float) -> dict[str, Any]:
    """Ray Train's ``ScalingConfig`` for the run: how many workers, what each holds, where.

    On GPUs one GPU per worker (plus the spec's CPUs for its data and host work), packed:
    ranks on one node talk over NVLink, and ZeRO-3 gathers every layer's weights on every
    step. On CPUs spread, best effort, one worker per node where there are enough nodes:
    each node's cores and memory serve one rank, and a job still starts on a single node.

    >>> scaling(2, use_gpu=True, cpus_per_worker=4.0)  # doctest: +NORMALIZE_WHITESPACE
    {'num_workers': 2, 'use_gpu': True, 'resources_per_worker': {'CPU': 4.0, 'GPU': 1},
     'placement_strategy': 'PACK'}
    >>> scaling(2, use_gpu=False, cpus_per_worker=1.0)  # doctest: +NORMALIZE_WHITESPACE
    {'num_workers': 2, 'use_gpu': False, 'resources_per_worker': {'CPU': 1.0},
     'placement_strategy': 'SPREAD'}
    """
    resources: dict[str, float] = {"CPU": cpus_per_worker}
    if use_gpu:
        resources["GPU"] = 1
    return {
        "num_workers": num_workers,
        "use_gpu": use_gpu,
        "resources_per_worker": resources,
        "placement_strategy": "PACK" if use_gpu else "SPREAD",
    }


def forget_earlier_runs(spec: TrainingSpec, s3: Any) -> None:
    """Start Ray Train afresh, so that only ``resume_from`` says where this run starts.

    Ray Train keeps a snapshot of its checkpoints in the run folder and hands the latest to a
    new run with the same folder; an earlier run of this job (paused, or lost) left one there.
    The checkpoints themselves stay.
    """
    s3.delete_object(Bucket=spec.s3.bucket, Key=ray_train_snapshot_key(spec.job_id))


def confirm_adapter(spec: TrainingSpec, s3: Any) -> None:
    """The ``result`` event promises the adapter (or full model) is in S3: check first."""
    expected = ("config.json",) if spec.hyperparameters.full_finetune else ADAPTER_FILES
    bucket, prefix = spec.s3.bucket, spec.adapter_prefix
    missing = [name for name in expected if not storage.exists(s3, bucket, prefix + name)]
    if missing:
        raise RuntimeError(f"adapter files missing under {spec.adapter_prefix}: {missing}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
