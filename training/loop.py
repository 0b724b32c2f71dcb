"""What every Ray Train worker runs: fine-tuning (LoRA or full, SFT or DPO) under DeepSpeed ZeRO.

Reads top to bottom: setup (data, objective, model, engine, the checkpoint to start from),
train (the untrained model's validation loss first, one metrics event per optimizer step from
rank 0, validation when due, a checkpoint at every epoch end and every
``checkpoint_every_steps`` with the whole validation file's loss, a stop at a requested
pause), save (the adapter, or the whole model, to ``models/{model_key}/`` unless paused).
Ray Train has already joined the workers into a process group (gloo on CPU, nccl on GPU);
DeepSpeed reuses it.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import deepspeed
import ray.train
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from contract.bucket import ADAPTER_FILES
from contract.events import BaselineData, BaselineEvent, MetricsData, MetricsEvent
from contract.spec import TrainingSpec
from training import storage
from training.adapter import save_adapter, upload_adapter
from training.checkpoints import Checkpointer, restore, starting_checkpoint
from training.control import PauseWatch, any_rank, s3_control_reader
from training.data import StepPlan, epoch_indices, micro_batch_size, plan_steps, resume_point
from training.deepspeed_private import skip_shm_comm_op
from training.events import EventWriter, s3_event_writer
from training.examples import load_data
from training.memory import step_peak_memory_gib
from training.model_load import load_base_model
from training.objectives import Objective, Preference, Sums, Supervised, add, all_reduced
from training.run import Run
from training.torch_private import cpu_has_bf16
from training.trainer_state import TrainerState, checkpoint_due


def train_loop_per_worker(config: dict[str, Any]) -> None:
    spec = TrainingSpec.model_validate(config["spec"])
    hp = spec.hyperparameters
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    # One thread per CPU the worker holds: more only contend with the other workers.
    torch.set_num_threads(max(1, int(spec.cpus_per_worker)))

    data = load_data(spec)
    objective = objective_for(spec, data.pad_id)
    plan = plan_steps(len(data.train), world_size, hp.batch_size, hp.n_epochs)
    micro_batch = micro_batch_size(plan.examples_per_rank_step, objective.max_example_tokens)
    engine = build_engine(spec, plan, world_size, micro_batch)
    checkpoint = starting_checkpoint(spec)
    start = (
        restore(engine, checkpoint, plan, rank, world_size)
        if checkpoint is not None
        else TrainerState.fresh(plan, world_size)
    )
    # Every checkpoint report carries these: the driver reads the last one from fit().
    run_metrics = {
        "trained_tokens": sum(map(objective.num_tokens, data.train)) * hp.n_epochs,
        "total_steps": plan.total_steps,
    }

    with rank0_events(spec, rank) as events:
        run = Run(spec, plan, rank, world_size, events)
        checkpoints = Checkpointer(engine, run, run_metrics)
        validation = Validation(objective, data.valid, run, spec.eval_every_steps, micro_batch)
        if checkpoint is None:  # a resumed run's baseline was written by its first run
            validation.baseline(engine)
        paused = train(engine, data.train, objective, validation, run, start, checkpoints,
                       pause_check(spec, rank))
    if paused:
        return

    with tempfile.TemporaryDirectory(prefix="adapter-") as out:
        save_adapter(engine, spec, Path(out), rank)
        if rank == 0:
            upload_adapter(spec, Path(out), spec.adapter_prefix)


# --- setup -------------------------------------------------------------------------------


def objective_for(spec: TrainingSpec, pad_id: int) -> Objective:
    hp = spec.hyperparameters
    if spec.method == "dpo":
        assert hp.beta is not None  # TrainingSpec refuses a DPO spec without it
        return Preference(pad_id=pad_id, beta=hp.beta, max_seq_length=hp.max_seq_length)
    return Supervised(max_seq_length=hp.max_seq_length, pad_id=pad_id, packing=hp.packing)


def use_bf16(spec: TrainingSpec) -> bool:
    """Train in bf16 where the hardware computes it: a GPU with bf16, or (CPU workers) an x86
    CPU with AVX-512 BF16 or AMX; fp32 elsewhere, where bf16 would be emulated and slower.

    Weights, activations and gradients are then bf16; DeepSpeed's bf16 mode keeps fp32
    master weights and fp32 Adam states in the optimizer, and the loss upcasts each chunk of
    logits to fp32 (:mod:`training.token_loss`).
    """
    if spec.use_gpu:
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return cpu_has_bf16()


def deepspeed_config(
    zero_stage: int, examples_per_step: int, world_size: int, bf16: bool,
    micro_batch: int | None = None,
) -> dict[str, Any]:
    """The ZeRO config seen to work on CPU under Ray Train (gloo, no FusedAdam build).

    A rank's ``examples_per_step`` go through forwards of ``micro_batch`` examples each (all
    of them in one forward when ``None``), a divisor of it
    (:func:`training.data.micro_batch_size`); DeepSpeed accumulates the gradients of the
    ``examples_per_step / micro_batch`` forwards and divides each loss by that count.

    >>> config = deepspeed_config(zero_stage=2, examples_per_step=8, world_size=2, bf16=False,
    ...                           micro_batch=2)
    >>> [config[k] for k in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
    ...                      "train_batch_size")]
    [2, 4, 16]
    """
    micro = examples_per_step if micro_batch is None else micro_batch
    if micro < 1 or examples_per_step % micro:
        raise ValueError(f"micro_batch {micro} does not divide {examples_per_step} examples")
    return {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": examples_per_step // micro,
        "train_batch_size": examples_per_step * world_size,
        "gradient_clipping": 1.0,
        "zero_optimization": {"stage": zero_stage},
        # A torch AdamW avoids compiling DeepSpeed's FusedAdam; ZeRO then wants this flag.
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": bf16},
        "steps_per_print": 1_000_000_000,
    }


def lr_factor(step: int, total_steps: int, warmup_steps: int, kind: str = "linear") -> float:
    """Linear warmup, then linear or cosine decay, never reaching 0 on a step that is taken.

    >>> [round(lr_factor(s, total_steps=5, warmup_steps=1), 2) for s in range(5)]
    [1.0, 1.0, 0.75, 0.5, 0.25]
    >>> [round(lr_factor(s, total_steps=5, warmup_steps=1, kind="cosine"), 2) for s in range(5)]
    [1.0, 1.0, 0.85, 0.5, 0.15]
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    remaining = (total_steps - step) / max(1, total_steps - warmup_steps)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * (1.0 - remaining)))
    return remaining


def warmup_steps(total_steps: int, ratio: float) -> int:
    """Rounded down, at least one step when any warmup is asked for.

    >>> warmup_steps(25, 0.1), warmup_steps(15, 0.1), warmup_steps(5, 0.1), warmup_steps(5, 0.0)
    (2, 1, 1, 0)
    """
    return max(1, int(total_steps * ratio)) if ratio > 0 else 0


def build_model(spec: TrainingSpec, ds_config: dict[str, Any]) -> Any:
    """The model to train: a fresh LoRA on the base, a fine-tuned adapter to continue
    (``init_adapter_key``), or the whole base (``full_finetune``)."""
    hp = spec.hyperparameters
    torch.manual_seed(spec.seed)  # identical LoRA init on every rank
    base = load_base_model(spec, ds_config,
                           torch.bfloat16 if use_bf16(spec) else torch.float32)
    if hp.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hp.full_finetune:
        return base
    if spec.init_adapter_key:
        return PeftModel.from_pretrained(base, download_adapter(spec), is_trainable=True)
    lora = LoraConfig(
        r=hp.lora_r,
        lora_alpha=hp.lora_alpha,
        lora_dropout=hp.lora_dropout,
        target_modules=hp.lora_target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(base, lora)


def download_adapter(spec: TrainingSpec) -> str:
    """The adapter to continue from, in a local folder (kept for the life of the worker)."""
    assert spec.init_adapter_key is not None
    out = Path(tempfile.mkdtemp(prefix="init-adapter-"))
    s3 = storage.client(spec.s3)
    for name in ADAPTER_FILES:
        key = spec.init_adapter_key.rstrip("/") + "/" + name
        (out / name).write_bytes(storage.read_bytes(s3, spec.s3.bucket, key))
    return str(out)


def initialize_deepspeed(**kwargs: Any) -> Any:
    """``deepspeed.initialize(**kwargs)``'s engine, without building DeepSpeed's shm op.

    On CPU, DeepSpeed's comm backend JIT-compiles ``deepspeed_shm_comm`` when it starts, under
    a lock file in the user's torch extensions folder (``~/.cache/torch_extensions``) that
    every worker of every job on the machine takes, even when nothing needs compiling. A
    worker killed while it holds the lock (a cancelled or paused run, a failed worker, a
    stopped stack) leaves the file behind, and every later worker waits on it forever:
    training never starts again on that machine. The op serves only
    ``inference_all_reduce`` (DeepSpeed inference's tensor parallelism), never training;
    marked incompatible (:mod:`training.deepspeed_private`), DeepSpeed skips it (and the
    first job its 30 s compile).
    """
    skip_shm_comm_op()
    engine, *_ = deepspeed.initialize(**kwargs)
    return engine


def build_engine(spec: TrainingSpec, plan: StepPlan, world_size: int, micro_batch: int) -> Any:
    hp = spec.hyperparameters
    ds_config = deepspeed_config(hp.zero_stage, plan.examples_per_rank_step, world_size,
                                 use_bf16(spec), micro_batch)
    model = build_model(spec, ds_config)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=hp.learning_rate, weight_decay=0.0)
    warmup = warmup_steps(plan.total_steps, hp.warmup_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, plan.total_steps, warmup, hp.lr_scheduler)
    )
    return initialize_deepspeed(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=ds_config,
    )


@contextlib.contextmanager
def rank0_events(spec: TrainingSpec, rank: int) -> Iterator[EventWriter | None]:
    """Rank 0's event writer; other ranks get ``None`` and write nothing."""
    if rank != 0:
        yield None
        return
    with s3_event_writer(storage.client(spec.s3), spec.s3.bucket, spec.job_id) as events:
        yield events


def pause_check(spec: TrainingSpec, rank: int) -> Callable[[], bool]:
    """Whether the API asked for a pause: rank 0 reads the control object, others say no."""
    if rank != 0:
        return lambda: False
    read = s3_control_reader(storage.client(spec.s3), spec.s3.bucket, spec.job_id)
    return PauseWatch(read).requested


# --- train -------------------------------------------------------------------------------


def train(
    engine: Any,
    examples: Sequence[Any],
    objective: Objective,
    validation: Validation,
    run: Run,
    start: TrainerState,
    checkpoints: Checkpointer,
    pause_requested: Callable[[], bool],
) -> bool:
    """Train from ``start`` to the last step, or until a pause; returns whether paused.

    Each optimizer step is :func:`accumulate` over this rank's ``examples_per_rank_step``
    examples. Checks for a pause after every step but the last, all ranks agreeing. The run
    always ends on a checkpoint of the step it stopped at.
    """
    plan, spec = run.plan, run.spec
    step, metrics = start.step, start.metrics
    first_epoch, first_at = resume_point(step, plan)
    per_step = plan.examples_per_rank_step
    for epoch in range(first_epoch, plan.n_epochs):
        indices = epoch_indices(len(examples), plan, spec.seed, epoch, run.rank, run.world_size)
        if epoch == first_epoch:
            indices = indices[first_at:]  # a multiple of per_step: steps stay aligned
        for at in range(0, len(indices), per_step):
            sums = accumulate(engine, objective, [examples[i] for i in indices[at : at + per_step]])
            step += 1
            metrics = step_metrics(step, plan.total_steps, objective, all_reduced(sums))
            metrics["peak_memory_gib"] = step_peak_memory_gib(spec.use_gpu)
            due = checkpoint_due(step, plan, spec.checkpoint_every_steps)
            metrics.update(validation.at(step, engine, full=due))
            emit_metrics(run.events, metrics)
            paused = step < plan.total_steps and any_rank(pause_requested())
            if paused and not due:  # every checkpoint is judged on the whole file
                metrics.update(validation.full(engine))
            if paused or due:
                checkpoints.save(step, metrics, paused=paused)
            if paused:
                return True
    if checkpoints.last_step != step:  # resumed from the last step: nothing left to train
        checkpoints.save(step, metrics or {"step": step})
    return False


def accumulate(engine: Any, objective: Objective, examples: Sequence[Any]) -> Sums:
    """One optimizer step over ``examples``, in forwards of the engine's micro-batch size;
    the step's metric sums on this rank.

    DeepSpeed divides each forward's loss (a mean over its examples) by the number of
    forwards and steps the optimizer at the last one (its accumulation boundary).
    """
    engine.train()
    micro = engine.train_micro_batch_size_per_gpu()
    sums: Sums = {}
    for at in range(0, len(examples), micro):
        loss, micro_sums = objective.step(engine, examples[at : at + micro])
        engine.backward(loss)
        engine.step()
        sums = add(sums, micro_sums)
    return sums


def step_metrics(step: int, total_steps: int, objective: Objective, sums: Sums) -> dict[str, Any]:
    return {
        "step": step,
        "total_steps": total_steps,
        **objective.metrics(sums, "train"),
        "tokens": int(sums.get("tokens", 0)),
    }


def emit_metrics(events: EventWriter | None, metrics: dict[str, Any]) -> None:
    if events is None:
        return
    valid = f", validation loss={metrics['valid_loss']:.4f}" if "valid_loss" in metrics else ""
    message = (f"Step {metrics['step']}/{metrics['total_steps']}: "
               f"training loss={metrics['train_loss']:.4f}{valid}")
    events.emit(MetricsEvent(message=message, data=MetricsData(**metrics)))


# --- validation --------------------------------------------------------------------------


class Validation:
    """Loss on held-out examples: a rotating sample every ``every`` steps and at the last
    step (``valid_*``), and the whole file (``full_valid_*``) before training
    (:meth:`baseline`) and at each checkpoint's step, the last one included: the service
    names the checkpoint with the lowest as the job's best.

    Every rank evaluates its share of the same sample in the same number of forwards of
    ``batch`` examples (ZeRO-3 gathers weights collectively in each); sums are added over
    ranks, so each example counts once.
    """

    def __init__(self, objective: Objective, examples: Sequence[Any], run: Run,
                 every: int | None, batch: int) -> None:
        self._objective = objective
        self._examples = examples
        self._run = run
        total = run.plan.total_steps
        self._every = every or max(1, total // 10)
        self._batch = batch

    def at(self, step: int, model: Any, full: bool = False) -> dict[str, float]:
        """The validation metrics due after ``step``, the whole file's too where ``full``
        (or at the last step); ``{}`` when none are."""
        last = step == self._run.plan.total_steps
        metrics: dict[str, float] = {}
        if not self._examples:
            return metrics
        if last or step % self._every == 0:
            n = len(self._examples)
            size = min(n, self._run.plan.examples_per_rank_step * self._run.world_size)
            first = (step // self._every) * size
            metrics = self._evaluate(model, [(first + k) % n for k in range(size)], "valid")
        if full or last:
            metrics |= self.full(model)
        return metrics

    def full(self, model: Any) -> dict[str, float]:
        """The whole file's ``full_valid_*`` metrics; ``{}`` without a validation file."""
        if not self._examples:
            return {}
        return self._evaluate(model, list(range(len(self._examples))), "full_valid")

    def baseline(self, model: Any) -> None:
        """Before step 1: the whole file's metrics of the model as training finds it (the
        base, or the adapter continued training starts from), as rank 0's ``baseline``
        event. Every rank evaluates (ZeRO-3 gathers weights collectively)."""
        metrics = self.full(model)
        if not metrics or self._run.events is None:
            return
        loss = metrics["full_valid_loss"]
        self._run.events.emit(BaselineEvent(
            message=f"Validation loss before training: {loss:.4f}",
            data=BaselineData(**metrics)))

    def _evaluate(self, model: Any, indices: list[int], prefix: str) -> dict[str, float]:
        mine = shard(indices, self._run.rank, self._run.world_size)
        sums: Sums = {}
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for at in range(0, len(mine), self._batch):
                chunk = mine[at : at + self._batch]
                _, batch_sums = self._objective.step(
                    model, [self._examples[i if i is not None else indices[0]] for i in chunk])
                counted = sum(i is not None for i in chunk) / len(chunk)
                sums = add(sums, {k: v * counted for k, v in batch_sums.items()})
        model.train(was_training)
        return self._objective.metrics(all_reduced(sums), prefix)


def shard(indices: list[int], rank: int, world_size: int) -> list[int | None]:
    """This rank's share of ``indices``, padded with ``None`` so every rank has as many.

    >>> [shard([0, 1, 2], rank, 2) for rank in (0, 1)]
    [[0, 2], [1, None]]
    """
    mine: list[int | None] = list(indices[rank::world_size])
    return mine + [None] * (math.ceil(len(indices) / world_size) - len(mine))
