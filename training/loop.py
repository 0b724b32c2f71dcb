"""What every Ray Train worker runs: LoRA fine-tuning of the base model under DeepSpeed ZeRO.

Reads top to bottom: setup (data, model, engine, the checkpoint to start from), train (one
metrics event per optimizer step from rank 0, a checkpoint at every epoch end and every
``checkpoint_every_steps``, a stop at a requested pause), save (the PEFT adapter to
``models/{model_key}/`` unless paused).
Ray Train has already joined the workers into a process group (gloo on CPU, nccl on GPU);
DeepSpeed reuses it.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from training.adapter import save_adapter, upload_adapter
from training.chat_template import IGNORE_INDEX, TokenizedExample
from training.checkpoints import Checkpointer, TrainerState, checkpoint_due
from training.data import (
    StepPlan,
    collate,
    count_tokens,
    epoch_indices,
    plan_steps,
    resume_point,
)
from training.spec import TrainingSpec


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train

    from training.checkpoints import restore, starting_checkpoint

    spec = TrainingSpec.model_validate(config["spec"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(1)  # one core per worker; more threads only contend

    examples, pad_id = load_data(spec)
    plan = plan_steps(len(examples), world_size, spec.batch_size, spec.n_epochs)
    engine = build_engine(spec, plan, world_size)
    checkpoint = starting_checkpoint(spec)
    start = (
        restore(engine, checkpoint, plan, rank, world_size)
        if checkpoint is not None
        else TrainerState.fresh(plan, world_size)
    )
    # Every checkpoint report carries these: the driver reads the last one from fit().
    run_metrics = {
        "trained_tokens": count_tokens(examples) * spec.n_epochs,
        "total_steps": plan.total_steps,
    }

    with rank0_events(spec, rank) as events:
        run = Run(spec, plan, rank, world_size, events)
        checkpoints = Checkpointer(engine, run, run_metrics)
        paused = train(engine, examples, pad_id, run, start, checkpoints, pause_check(spec, rank))
    if paused:
        return

    with tempfile.TemporaryDirectory(prefix="adapter-") as out:
        save_adapter(engine, spec, Path(out), rank)
        if rank == 0:
            upload_adapter(spec, Path(out), spec.adapter_prefix)


# --- setup -------------------------------------------------------------------------------


def load_data(spec: TrainingSpec) -> tuple[list[TokenizedExample], int]:
    from transformers import AutoTokenizer

    from training import storage
    from training.data import read_training_file, tokenize_all

    tokenizer = AutoTokenizer.from_pretrained(spec.base_model_path)
    conversations = read_training_file(spec, storage.client(spec.s3))
    examples = tokenize_all(conversations, tokenizer, spec.max_seq_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return examples, pad_id


def use_bf16(spec: TrainingSpec) -> bool:
    return spec.use_gpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def deepspeed_config(
    zero_stage: int, grad_accum: int, world_size: int, bf16: bool
) -> dict[str, Any]:
    """The ZeRO config seen to work on CPU under Ray Train (STACK-NOTES); micro batch 1.

    >>> deepspeed_config(zero_stage=2, grad_accum=2, world_size=2, bf16=False)["train_batch_size"]
    4
    """
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": grad_accum * world_size,
        "gradient_clipping": 1.0,
        "zero_optimization": {"stage": zero_stage},
        # A torch AdamW avoids compiling DeepSpeed's FusedAdam; ZeRO then wants this flag.
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": bf16},
        "steps_per_print": 1_000_000_000,
    }


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warmup then linear decay, never reaching 0 on a step that is taken.

    >>> [round(lr_factor(s, total_steps=5, warmup_steps=1), 2) for s in range(5)]
    [1.0, 1.0, 0.75, 0.5, 0.25]
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return (total_steps - step) / max(1, total_steps - warmup_steps)


def build_engine(spec: TrainingSpec, plan: StepPlan, world_size: int) -> Any:
    import deepspeed
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    bf16 = use_bf16(spec)
    torch.manual_seed(spec.seed)  # identical LoRA init on every rank
    base = AutoModelForCausalLM.from_pretrained(
        spec.base_model_path, dtype=torch.bfloat16 if bf16 else torch.float32
    )
    lora = LoraConfig(
        r=spec.lora.r,
        lora_alpha=spec.lora.alpha,
        lora_dropout=spec.lora.dropout,
        target_modules=spec.lora.target_modules,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, lora)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec.learning_rate, weight_decay=0.0)
    warmup = max(1, plan.total_steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, plan.total_steps, warmup)
    )
    engine, *_ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(spec.zero_stage, plan.grad_accum, world_size, bf16),
    )
    return engine


@contextlib.contextmanager
def rank0_events(spec: TrainingSpec, rank: int) -> Iterator[Any]:
    """Rank 0's event writer; other ranks get ``None`` and write nothing."""
    if rank != 0:
        yield None
        return
    from training import storage
    from training.events import s3_event_writer

    with s3_event_writer(storage.client(spec.s3), spec.s3.bucket, spec.job_id) as events:
        yield events


def pause_check(spec: TrainingSpec, rank: int) -> Callable[[], bool]:
    """Whether the API asked for a pause: rank 0 reads the control object, others say no."""
    if rank != 0:
        return lambda: False
    from training import storage
    from training.control import PauseWatch, s3_control_reader

    read = s3_control_reader(storage.client(spec.s3), spec.s3.bucket, spec.job_id)
    return PauseWatch(read).requested


# --- train -------------------------------------------------------------------------------


@dataclass
class TokenStats:
    """Sums over the trained tokens of one optimizer step, reduced across ranks."""

    loss_sum: float = 0.0
    correct: float = 0.0
    count: float = 0.0

    def add(self, loss_sum: torch.Tensor, correct: torch.Tensor, count: torch.Tensor) -> None:
        self.loss_sum += float(loss_sum)
        self.correct += float(correct)
        self.count += float(count)

    def all_reduced(self) -> TokenStats:
        import torch.distributed as dist

        totals = torch.tensor([self.loss_sum, self.correct, self.count], dtype=torch.float64)
        if dist.is_available() and dist.is_initialized():
            backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
            totals = totals.to(backend_device)
            dist.all_reduce(totals)
        loss_sum, correct, count = totals.tolist()
        return TokenStats(loss_sum, correct, count)

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / max(1.0, self.count)

    @property
    def accuracy(self) -> float:
        return self.correct / max(1.0, self.count)


def token_loss(
    logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean next-token loss over trained tokens, plus the sums the metrics need.

    Position ``i`` predicts token ``i + 1``. An example with no trained token left (all cut
    by truncation) gives a zero loss that still has a graph, so backward stays collective.
    Returns ``(mean_loss, loss_sum, correct, count)``.
    """
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:].to(shift_logits.device)
    loss_sum = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    mask = shift_labels != IGNORE_INDEX
    count = mask.sum()
    correct = ((shift_logits.argmax(-1) == shift_labels) & mask).sum()
    return loss_sum / count.clamp(min=1), loss_sum.detach(), correct, count


@dataclass
class Run:
    """One worker's place in the run."""

    spec: TrainingSpec
    plan: StepPlan
    rank: int
    world_size: int
    events: Any
    """Rank 0's event writer; ``None`` on the other ranks."""


def train(
    engine: Any,
    examples: list[TokenizedExample],
    pad_id: int,
    run: Run,
    start: TrainerState,
    checkpoints: Checkpointer,
    pause_requested: Callable[[], bool],
) -> bool:
    """Train from ``start`` to the last step, or until a pause; returns whether paused.

    Checks for a pause after every optimizer step but the last, all ranks agreeing. The run
    always ends on a checkpoint of the step it stopped at.
    """
    from training.control import any_rank

    engine.train()
    plan, spec = run.plan, run.spec
    step, metrics, stats = start.step, start.metrics, TokenStats()
    first_epoch, first_micro = resume_point(step, plan)
    for epoch in range(first_epoch, plan.n_epochs):
        indices = epoch_indices(len(examples), plan, spec.seed, epoch, run.rank, run.world_size)
        if epoch == first_epoch:
            indices = indices[first_micro:]  # a multiple of grad_accum: steps stay aligned
        for micro, index in enumerate(indices, start=1):
            batch = collate([examples[index]], pad_id)
            logits = engine(
                input_ids=batch["input_ids"].to(engine.device),
                attention_mask=batch["attention_mask"].to(engine.device),
            ).logits
            loss, *sums = token_loss(logits, batch["labels"])
            engine.backward(loss)
            engine.step()  # DeepSpeed only updates on accumulation boundaries
            stats.add(*sums)
            if micro % plan.grad_accum == 0:
                step += 1
                metrics = step_metrics(step, plan.total_steps, stats.all_reduced())
                emit_metrics(run.events, metrics)
                stats = TokenStats()
                paused = step < plan.total_steps and any_rank(pause_requested())
                if paused or checkpoint_due(step, plan, spec.checkpoint_every_steps):
                    checkpoints.save(step, metrics, paused=paused)
                if paused:
                    return True
    if checkpoints.last_step != step:  # resumed from the last step: nothing left to train
        checkpoints.save(step, metrics or {"step": step})
    return False


def step_metrics(step: int, total_steps: int, stats: TokenStats) -> dict[str, Any]:
    return {
        "step": step,
        "total_steps": total_steps,
        "train_loss": stats.mean_loss,
        "train_mean_token_accuracy": stats.accuracy,
    }


def emit_metrics(events: Any, metrics: dict[str, Any]) -> None:
    if events is None:
        return
    events.emit(
        f"Step {metrics['step']}/{metrics['total_steps']}: "
        f"training loss={metrics['train_loss']:.4f}",
        type="metrics",
        data=metrics,
    )
