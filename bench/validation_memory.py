"""Validation of a large training file: memory, time, and what it does to other tenants::

    .venv/bin/python -m bench.validation_memory                 # 512 MB, this checkout
    .venv/bin/python -m bench.validation_memory --mb 64         # a quick run
    git archive HEAD | tar -x -C /tmp/openft-before             # a checkout to compare with
    .venv/bin/python -m bench.validation_memory --mb 64 \\
        --code before=/tmp/openft-before --code after=.

Issue 16's targets: a 512 MB training file is validated in under 256 MB of extra memory, and
while it validates another tenant's small job still goes from created to ``queued`` in
seconds. A seeded chat JSONL of ``--mb`` MB (short and long conversations, ~1 KB a line on
average) is written to disk and stored under a file of tenant A in a real SeaweedFS; a small
file of tenant B beside it. Then, per ``--code LABEL=PATH`` (a checkout whose ``service``
package runs, with this checkout's ``.venv``), a fresh process starts the API app with its
scheduler (SQLite, the tiny Llama's tokenizer, a stand-in Ray with one idle CPU node), so
the large job validates the way the service validates it, and, once it has begun, tenant B
creates its small job. Measured in that process: peak RSS above the RSS when the scheduler
started (sampled every 20 ms, and ``VmHWM``), optionally the ``tracemalloc`` peak, seconds
until the large job is ``queued``, and seconds from the small job's create to ``queued``.
Results go to ``bench/results/validation_memory.md`` and ``.json``; exit status 2 when the
last checkout misses a target.
"""

from __future__ import annotations

import argparse
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
from pathlib import Path
from typing import Any

MB = 1_000_000
TARGET_EXTRA_MIB = 256
TARGET_SMALL_JOB_S = 10.0
S3 = {"bucket": "openft-bench", "access_key": "bench", "secret_key": "bench-secret"}
KEYS = {"sk-bench-a": "org-bench-a", "sk-bench-b": "org-bench-b"}
WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly hex "
         "jovial buyers of zinc and amber in the old market square").split()


# -- the data ----------------------------------------------------------------------------
def write_jsonl(path: Path, n_bytes: int, seed: int = 16) -> int:
    """Chat lines until ``n_bytes``: nine in ten short (a question, a short answer), one in
    ten long (a few KB). Returns the number of lines."""
    rng = random.Random(seed)
    n = written = 0
    with path.open("wb") as out:
        while written < n_bytes:
            words = rng.randint(300, 900) if rng.random() < 0.1 else rng.randint(10, 60)
            text = " ".join(rng.choice(WORDS) for _ in range(words))
            line = json.dumps({"messages": [
                {"role": "system", "content": "Answer in one paragraph."},
                {"role": "user", "content": f"Question {n}: what about {text[:80]}?"},
                {"role": "assistant", "content": text}]}).encode() + b"\n"
            out.write(line)
            written += len(line)
            n += 1
    return n


def small_jsonl(n: int = 12) -> bytes:
    return b"".join(json.dumps({"messages": [
        {"role": "user", "content": f"What is {i} + 1?"},
        {"role": "assistant", "content": str(i + 1)}]}).encode() + b"\n" for i in range(n))


# -- the measured process (runs with the checkout's ``service``; imports nothing of bench) --
def _settings(cfg: dict[str, Any]) -> Any:
    from service.settings import Settings

    return Settings(data_dir=Path(cfg["data_dir"]), database_url=cfg["database_url"],
                    s3_endpoint_url=cfg["s3_url"], s3_bucket=S3["bucket"],
                    s3_access_key=S3["access_key"], s3_secret_key=S3["secret_key"],
                    ray_address="http://127.0.0.1:9", serving_url="http://127.0.0.1:9",
                    api_keys=",".join(f"{k}={o}" for k, o in KEYS.items()),
                    default_base_model=False, base_models={"tiny-llama": cfg["model_dir"]},
                    scheduler_interval_s=0.2)


class IdleRay:
    """Ray as the scheduler sees it: one free CPU node; runs are accepted and stay pending."""

    def submit(self, submission_id: str, entrypoint: str, env_vars: dict[str, str],
               metadata: dict[str, str]) -> str:
        return submission_id

    def status(self, submission_id: str) -> Any:
        from service.context import RunState

        return RunState("PENDING", "")

    def stop(self, submission_id: str) -> None:
        pass

    def cluster(self) -> Any:
        from service.context import ClusterNode, Resources

        node = Resources(4, 0, 16 * 2**30)
        return [ClusterNode("node", node, node)]

    def ping(self, timeout: float = 2.0) -> None:
        pass

    def close(self) -> None:
        pass


def _app(cfg: dict[str, Any], run_scheduler: bool) -> Any:
    from service.main import build_context, create_app

    return create_app(_settings(cfg), run_scheduler=run_scheduler,
                      context=lambda s: build_context(s, ray=IdleRay()))


def _header(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def prepare(cfg: dict[str, Any]) -> dict[str, Any]:
    """Tenant A's large file and job (left ``validating_files``), tenant B's small file.

    The large file's row is made by an ordinary upload; its bytes are then replaced in the
    bucket by the large file (a multipart upload straight to S3: the test client would hold
    512 MB in memory)."""
    from fastapi.testclient import TestClient

    from contract.bucket import file_key
    from service.storage import BlobStore

    a, b = (_header(k) for k in KEYS)
    with TestClient(_app(cfg, run_scheduler=False)) as client:
        def upload(headers: dict[str, str]) -> str:
            resp = client.post("/v1/files", headers=headers, data={"purpose": "fine-tune"},
                               files={"file": ("train.jsonl", small_jsonl(), "application/jsonl")})
            resp.raise_for_status()
            return resp.json()["id"]

        large, small = upload(a), upload(b)
        blobs = BlobStore(cfg["s3_url"], S3["bucket"], S3["access_key"], S3["secret_key"])
        blobs.upload_file(file_key(large), Path(cfg["large_file"]))
        job = client.post("/v1/fine_tuning/jobs", headers=a,
                          json={"model": "tiny-llama", "training_file": large})
        job.raise_for_status()
    return {"large_job": job.json()["id"], "small_file": small}


def _rss_kib(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def measure(cfg: dict[str, Any]) -> dict[str, Any]:
    """Start the scheduler on the prepared job; tenant B's small job once it validates."""
    import tracemalloc

    from fastapi.testclient import TestClient

    a, b = (_header(k) for k in KEYS)
    app = _app(cfg, run_scheduler=True)
    peak = {"rss": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak["rss"] = max(peak["rss"], _rss_kib())

    def status(client: TestClient, headers: dict[str, str], job_id: str) -> dict[str, Any]:
        return client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=headers).json()

    with TestClient(app) as client:
        started = time.monotonic()
        if cfg["tracemalloc"]:
            tracemalloc.start()
        baseline = _rss_kib()
        threading.Thread(target=sample, daemon=True).start()
        small_id = created = small_s = large_s = None
        large: dict[str, Any] = {}
        while small_s is None or large_s is None:
            now = time.monotonic()
            if small_id is None and now - started >= 1.0:  # the large validation is under way
                small = client.post("/v1/fine_tuning/jobs", headers=b, json={
                    "model": "tiny-llama", "training_file": cfg["small_file"]})
                small.raise_for_status()
                small_id, created = small.json()["id"], now
            if small_id is not None and small_s is None and \
                    status(client, b, small_id)["status"] != "validating_files":
                small_s = time.monotonic() - created
            large = status(client, a, cfg["large_job"])
            if large_s is None and large["status"] != "validating_files":
                large_s = time.monotonic() - started
            if time.monotonic() - started > cfg["timeout_s"]:
                break
            time.sleep(0.1)
        done.set()
        traced = tracemalloc.get_traced_memory()[1] if cfg["tracemalloc"] else None
    return {"large_status": large.get("status"), "large_error": large.get("error"),
            "large_s": large_s, "small_to_queued_s": small_s,
            "baseline_rss_mib": baseline / 1024,
            "peak_extra_rss_mib": (peak["rss"] - baseline) / 1024,
            "hwm_extra_rss_mib": (_rss_kib("VmHWM") - baseline) / 1024,
            "tracemalloc_peak_mib": None if traced is None else traced / 2**20}


def child(role: str, cfg_path: str) -> None:
    cfg = json.loads(Path(cfg_path).read_text())
    result = prepare(cfg) if role == "prepare" else measure(cfg)
    Path(cfg["out"]).write_text(json.dumps(result))


# -- the driver ------------------------------------------------------------------------
def run_child(code: Path, role: str, cfg: dict[str, Any], tmp: Path) -> dict[str, Any]:
    cfg_path = tmp / f"{role}.json"
    cfg_path.write_text(json.dumps({**cfg, "out": str(tmp / f"{role}-out.json")}))
    env = dict(os.environ, PYTHONPATH=str(code), RAY_AUTH_MODE="disabled")
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", role,
                           str(cfg_path)], cwd=code, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{role} on {code} failed:\n{proc.stderr[-4000:]}")
    return json.loads((tmp / f"{role}-out.json").read_text())


def bench_code(label: str, code: Path, base: dict[str, Any], tmp: Path) -> dict[str, Any]:
    work = tmp / label
    work.mkdir()
    cfg = {**base, "data_dir": str(work / "data"),
           "database_url": f"sqlite:///{work / 'openft.db'}"}
    cfg.update(run_child(code, "prepare", cfg, work))
    return {"code": label, **run_child(code, "measure", cfg, work)}


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def row_line(r: dict[str, Any]) -> str:
    return (f"| {r['code']} | {r['mb']} | {r['lines']} | {r['large_status']} | "
            f"{_fmt(r['large_s'])} | {_fmt(r['peak_extra_rss_mib'])} | "
            f"{_fmt(r['hwm_extra_rss_mib'])} | {_fmt(r['tracemalloc_peak_mib'])} | "
            f"{_fmt(r['small_to_queued_s'], 2)} |")


HEADER = ("| code | file MB | lines | large job | large job s | peak extra RSS MiB | "
          "VmHWM extra MiB | tracemalloc peak MiB | small job created -> queued s |\n"
          "|---|---|---|---|---|---|---|---|---|")


def check_targets(r: dict[str, Any]) -> list[str]:
    missed = []
    if r["large_status"] != "queued":
        missed.append(f"the large job ended {r['large_status']}: {r['large_error']}")
    if r["peak_extra_rss_mib"] > TARGET_EXTRA_MIB:
        missed.append(f"peak extra RSS {r['peak_extra_rss_mib']:.0f} MiB > {TARGET_EXTRA_MIB}")
    if r["small_to_queued_s"] is None or r["small_to_queued_s"] > TARGET_SMALL_JOB_S:
        missed.append(f"small job created -> queued {r['small_to_queued_s']} s > "
                      f"{TARGET_SMALL_JOB_S}")
    return missed


def render(rows: list[dict[str, Any]], meta: dict[str, Any], missed: list[str]) -> str:
    return "\n".join([
        f"# Validation of a {meta['mb']} MB training file: memory, time, other tenants", "",
        f"Run by `python -m bench.validation_memory` on {meta['date']}; {meta['machine']}; "
        f"code at {meta['code']}.", "",
        "Checkouts: " + ", ".join(f"`{k}` = {v}" for k, v in meta["checkouts"].items()), "",
        HEADER, *(row_line(r) for r in rows), "",
        f"Targets (last checkout): extra memory <= {TARGET_EXTRA_MIB} MiB for 512 MB, a small "
        f"job of another tenant queued within {TARGET_SMALL_JOB_S:.0f} s: "
        + ("met." if not missed else "missed: " + "; ".join(missed)), "",
        "- Extra RSS: above the process's RSS when its scheduler started (the app, the "
        "tokenizer not yet loaded), sampled every 20 ms; VmHWM is the kernel's high-water mark "
        "over the same baseline. tracemalloc (with `--tracemalloc`) counts Python allocations "
        "only, and slows them.",
        "- The large job: seconds from the scheduler's start to `queued` (validation, token "
        "counts with the tiny Llama's tokenizer and template, spec written). The small job: "
        "another tenant's 12-line file, created 1 s into the large validation.",
        f"- Load average before the run: {meta['loadavg']}.", "",
    ])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        here = Path(__file__).resolve().parent  # run as a script: bench/ must not shadow
        sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
        child(argv[1], argv[2])
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.environment import REPO, code_version, machine
    from devstack.processes import free_port, start_seaweedfs
    from devstack.tiny_model import build_tiny_llama

    parser = argparse.ArgumentParser(prog="python -m bench.validation_memory",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=512, help="size of the large file (MB)")
    parser.add_argument("--code", action="append", metavar="LABEL=PATH",
                        help="a checkout to measure (repeatable; default: this one as 'after')")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="also report the tracemalloc peak (slower)")
    parser.add_argument("--timeout-s", type=float, default=3600)
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    codes = [tuple(c.split("=", 1)) for c in args.code or [f"after={REPO}"]]
    tmp = Path(tempfile.mkdtemp(prefix="validation-memory-"))
    loadavg = " ".join(f"{x:.2f}" for x in os.getloadavg())
    s3_port = free_port()
    s3 = start_seaweedfs(tmp / "s3", s3_port, S3["bucket"], S3["access_key"],
                         S3["secret_key"], tmp)
    rows = []
    try:
        large = tmp / "large.jsonl"
        lines = write_jsonl(large, args.mb * MB)
        base = {"s3_url": f"http://127.0.0.1:{s3_port}", "large_file": str(large),
                "model_dir": str(build_tiny_llama(tmp / "tiny-llama")),
                "tracemalloc": args.tracemalloc, "timeout_s": args.timeout_s}
        print(HEADER)
        for label, path in codes:
            row = {**bench_code(label, Path(path).resolve(), base, tmp),
                   "mb": args.mb, "lines": lines}
            print(row_line(row), flush=True)
            rows.append(row)
    finally:
        s3.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    meta = {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(), "code": code_version(), "mb": args.mb,
            "checkouts": dict(codes), "loadavg": loadavg}
    missed = check_targets(rows[-1])
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "validation_memory.json").write_text(
        json.dumps({**meta, "rows": rows}, indent=1))
    (args.results_dir / "validation_memory.md").write_text(render(rows, meta, missed))
    print("\n".join(missed) or "targets met")
    return 2 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
