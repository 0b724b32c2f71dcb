"""Entry point of a fine-tuning run, submitted by the API through the Ray Jobs API::

    python -m training.driver s3://<bucket>/jobs/<job_id>/spec.json

Setup (read the spec, check the training file), train (Ray Train ``TorchTrainer``; rank 0
writes metrics events and uploads the adapter), settle (the ``result`` event once the adapter
is in S3, or an ``error`` event), exit 0 on success and 1 on failure.

The driver and rank 0 take turns writing event batches (never at the same time), each
continuing the numbering it finds in S3.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from training import storage
from training.chat_format import InvalidChatFile
from training.events import s3_event_writer
from training.spec import TrainingSpec

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
        num_examples = check_training_file(spec, s3)
        announce(spec, s3, f"Training started: {num_examples} examples, {spec.n_epochs} epochs")
        trained_tokens = fit(spec)
        confirm_adapter(spec, s3)
    except InvalidChatFile as e:
        return failed(spec, s3, {"code": e.code, "param": "training_file", "message": str(e)})
    except Exception as e:  # noqa: BLE001 - any other failure is the service's, not the user's
        log.exception("training failed")
        return failed(spec, s3, {"code": "server_error", "param": None, "message": summary(e)})
    result = {"trained_tokens": trained_tokens, "model_key": spec.model_key}
    announce(spec, s3, "New fine-tuned model created", type="result", data=result)
    return 0


def failed(spec: TrainingSpec, s3: Any, error: dict[str, Any]) -> int:
    announce(spec, s3, error["message"], type="error", level="error", data=error)
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


def announce(spec: TrainingSpec, s3: Any, message: str, **event: Any) -> None:
    """Write one event batch now. A fresh writer each time continues after rank 0's batches."""
    with s3_event_writer(s3, spec.s3.bucket, spec.job_id, background=False) as events:
        events.emit(message, **event)


def check_training_file(spec: TrainingSpec, s3: Any) -> int:
    """Fail fast, before any worker starts, on a line the service should have rejected."""
    from training.data import read_training_file

    return len(read_training_file(spec, s3))


def fit(spec: TrainingSpec) -> int:
    """Run the workers to completion; returns the trained tokens rank 0 reported."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from training.loop import train_loop_per_worker

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec.model_dump(mode="json")},
        scaling_config=ScalingConfig(
            num_workers=spec.num_workers,
            use_gpu=spec.use_gpu,
            resources_per_worker={"CPU": spec.cpus_per_worker},
        ),
        torch_config=TorchConfig(backend="nccl" if spec.use_gpu else "gloo"),
        run_config=RunConfig(
            name="ray-train",
            storage_path=f"{spec.s3.bucket}/{spec.checkpoints_prefix}",
            storage_filesystem=checkpoint_filesystem(spec),
        ),
    )
    result = trainer.fit()
    return int(result.metrics["trained_tokens"])


def checkpoint_filesystem(spec: TrainingSpec) -> Any:
    """Ray Train keeps its checkpoints (the adapter at the end) in the job's S3 prefix."""
    from urllib.parse import urlparse

    import pyarrow.fs

    endpoint = urlparse(spec.s3.endpoint_url)
    return pyarrow.fs.S3FileSystem(
        endpoint_override=endpoint.netloc,
        scheme=endpoint.scheme or "https",
        region=spec.s3.region,
    )


def confirm_adapter(spec: TrainingSpec, s3: Any) -> None:
    """The ``result`` event promises the adapter is servable: check before writing it."""
    from training.loop import ADAPTER_FILES

    missing = [
        name
        for name in ADAPTER_FILES
        if not storage.exists(s3, spec.s3.bucket, spec.adapter_prefix + name)
    ]
    if missing:
        raise RuntimeError(f"adapter files missing under {spec.adapter_prefix}: {missing}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
