"""Checkpoints of a run: resumable state, a servable adapter, and the ``checkpoint`` event.

Every rank writes its part into a local folder and hands it to ``ray.train.report``, which
uploads all of them into one folder, ``jobs/{job_id}/checkpoints/step-{step:08d}/``::

    trainer_state.json    the step and the step plan it belongs to (rank 0)
    deepspeed/            engine.save_checkpoint: LoRA weights, optimizer (one ZeRO shard per
                          rank), LR scheduler; frozen base weights are left out
    rng/rank-{r}.pt       each rank's torch RNG state (LoRA dropout draws from it)
    adapter/              adapter_config.json + adapter_model.safetensors (rank 0)

Once every rank's upload is done and Ray Train's controller holds every rank's report (a
restart then starts from this checkpoint), rank 0 copies the adapter to
``models/{model_key}-step-{step:08d}/`` and only then emits the ``checkpoint`` event.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import ray.train
import torch
import torch.distributed as dist

from contract.bucket import (
    ADAPTER_FILES,
    adapter_prefix,
    checkpoint_dir_name,
    checkpoint_key,
    checkpoint_model_key,
)
from contract.events import CheckpointData, CheckpointEvent, RestartData, RestartEvent
from contract.spec import TrainingSpec
from training import storage
from training.adapter import save_adapter, upload_adapter
from training.data import StepPlan
from training.events import EventWriter, s3_event_writer
from training.ray_train_private import wait_until_report_taken
from training.run import Run
from training.trainer_state import (
    STATE_FILE,
    TrainerState,
    read_trainer_state,
    run_shape,
)

log = logging.getLogger("training.checkpoints")

DEEPSPEED_TAG = "deepspeed"


# --- save --------------------------------------------------------------------------------


class Checkpointer:
    """Writes checkpoints of one worker's engine; every rank calls :meth:`save` together."""

    def __init__(self, engine: Any, run: Run, run_metrics: dict[str, Any]) -> None:
        self._engine = engine
        self._run = run
        self._run_metrics = run_metrics
        self.last_step: int | None = None
        """Step of the last checkpoint this run wrote."""

    def save(self, step: int, metrics: dict[str, Any], paused: bool = False) -> None:
        """Write the checkpoint of ``step``; ``metrics`` are that step's metrics event data.

        ``paused`` marks the run's last report: the driver reads it from ``trainer.fit()``.
        """
        spec, rank = self._run.spec, self._run.rank
        with tempfile.TemporaryDirectory(prefix="checkpoint-") as tmp:
            out = Path(tmp)
            state = TrainerState(step, metrics, run_shape(self._run.plan, self._run.world_size))
            save_state(self._engine, out, state, rank)
            if not spec.hyperparameters.full_finetune:  # adapter.py: no model per checkpoint
                save_adapter(self._engine, spec, out / "adapter", rank)
            report = {
                **self._run_metrics,
                "step": step,
                "checkpoint_key": checkpoint_key(spec.job_id, step),
                "paused": paused,
            }
            if self._run.events is not None:
                # Once Ray Train has this checkpoint a restart continues after it: the metrics
                # events up to it must not die in a killed rank 0's buffer.
                self._run.events.flush()
            ray.train.report(
                report,
                checkpoint=ray.train.Checkpoint.from_directory(out),
                checkpoint_dir_name=checkpoint_dir_name(step),
            )
            # The controller registers the checkpoint only once it has taken every rank's report
            # (at its next poll, RAY_TRAIN_HEALTH_CHECK_INTERVAL_S); a rank killed before then
            # takes the checkpoint with it, and a restart would begin from the one before
            # although the user was told this one was saved (tests/training/test_fault_tolerance).
            wait_until_report_taken()
            barrier()  # every rank's report is with the controller: the checkpoint is Ray's
            if rank == 0:
                if not spec.hyperparameters.full_finetune:
                    name = checkpoint_model_key(spec.model_key, step)
                    upload_adapter(spec, out / "adapter", adapter_prefix(name))
                if self._run.events is not None:  # rank 0 always has its writer
                    announce_checkpoint(self._run.events, spec, step, metrics)
        self.last_step = step


def announce_checkpoint(
    events: EventWriter, spec: TrainingSpec, step: int, metrics: dict[str, Any] | None
) -> None:
    """The ``checkpoint`` event of ``step``; its state and adapter are already in S3.

    A full fine-tune's checkpoints are resumable but not servable: no adapter, no model key.
    """
    name = checkpoint_model_key(spec.model_key, step)
    servable = not spec.hyperparameters.full_finetune
    data = CheckpointData(
        step=step,
        checkpoint_key=checkpoint_key(spec.job_id, step),
        adapter_key=adapter_prefix(name) if servable else None,
        model_key=name if servable else None,
        metrics=metrics,
    )
    events.emit(CheckpointEvent(message=f"Checkpoint at step {step} saved", data=data))


def save_state(engine: Any, out: Path, state: TrainerState, rank: int) -> None:
    engine.save_checkpoint(
        str(out), tag=DEEPSPEED_TAG, save_latest=False, exclude_frozen_parameters=True
    )
    rng = out / "rng"
    rng.mkdir()
    torch.save(rng_state(), rng / f"rank-{rank}.pt")
    if rank == 0:
        (out / STATE_FILE).write_text(state.to_json())


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


# --- restore -----------------------------------------------------------------------------


def starting_checkpoint(spec: TrainingSpec) -> Any:
    """The checkpoint this worker starts from, or ``None`` for a fresh start.

    Ray Train's own checkpoint comes first: it is set when Ray Train restarted the workers of
    this run after a failure (``spec.max_failures`` times at most), and is newer than anything
    the spec names. The driver clears what Ray Train remembers of earlier runs of the job, so
    on a run's first attempt only ``resume_from`` decides where it starts.
    """
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        if ray.train.get_context().get_world_rank() == 0:
            announce_restart(spec, checkpoint)
        return checkpoint
    if spec.resume_from:
        path = f"{spec.s3.bucket}/{spec.resume_from.strip('/')}"
        return ray.train.Checkpoint(path, filesystem=storage.pyarrow_filesystem(spec.s3))
    return None


RESTART_FILES = (STATE_FILE, *(f"adapter/{name}" for name in ADAPTER_FILES))
"""What rank 0 reads of the checkpoint it restarts from, before restoring all of it."""


def announce_restart(spec: TrainingSpec, checkpoint: Any) -> None:
    """Tell the user the run restarted, and announce its checkpoint again.

    The failed attempt may have died after Ray Train registered the checkpoint but before rank
    0 copied its adapter and emitted its event; the service upserts checkpoint rows by step, so
    a second event is harmless and a missing one is not. The metrics events up to the
    checkpoint's step are in S3 already (:meth:`Checkpointer.save` flushes them first); those
    of the steps after it come again from this attempt.
    """
    with tempfile.TemporaryDirectory(prefix="restart-") as tmp:
        out = Path(tmp)
        full = spec.hyperparameters.full_finetune
        for name in RESTART_FILES[:1] if full else RESTART_FILES:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/{name}") as f:
                (out / name).write_bytes(f.read())
        state = read_trainer_state(out)
        if not full:
            name = checkpoint_model_key(spec.model_key, state.step)
            upload_adapter(spec, out / "adapter", adapter_prefix(name))
    # The driver waits in trainer.fit() and the failed attempt's rank 0 is gone: no other
    # writer continues the job's event sequence now.
    s3 = storage.client(spec.s3)
    with s3_event_writer(s3, spec.s3.bucket, spec.job_id, background=False) as events:
        events.emit(RestartEvent(message=restart_message(state.step),
                                 data=RestartData(step=state.step)))
        announce_checkpoint(events, spec, state.step, state.metrics)
    log.info("restarted from %s at step %d", checkpoint.path, state.step)


def restart_message(step: int) -> str:
    """
    >>> restart_message(12)
    'Training restarted after a worker failure: continuing after step 12'
    """
    return f"Training restarted after a worker failure: continuing after step {step}"


def restore(
    engine: Any, checkpoint: Any, plan: StepPlan, rank: int, world_size: int
) -> TrainerState:
    """Load weights, optimizer, LR schedule and RNG of ``checkpoint`` into this rank.

    Every rank calls this together. The ranks that share a temp dir (a node's, or one machine
    running several nodes) share one download of a checkpoint Ray Train handed them; the
    last to leave ``as_directory`` deletes it. Without the barrier a rank that arrives late
    (rank 0, after :func:`announce_restart`) can find it deleted under it, and the restarted
    run fails again, using up a retry (``to_directory``: "does not exist, even though it
    should have been created by another process").
    """
    with checkpoint.as_directory() as folder:
        barrier()  # every rank holds the copy before any rank may delete it
        state = read_trainer_state(Path(folder))
        state.check_fits(plan, world_size)
        load_path, _ = engine.load_checkpoint(
            folder,
            tag=DEEPSPEED_TAG,
            load_module_strict=False,  # frozen weights are not saved
        )
        if load_path is None:
            raise FileNotFoundError(f"no DeepSpeed state in checkpoint {checkpoint.path}")
        set_rng_state(torch.load(Path(folder) / "rng" / f"rank-{rank}.pt", weights_only=True))
    log.info("rank %d resumed from %s at step %d", rank, checkpoint.path, state.step)
    return state


def rng_state() -> dict[str, Any]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
