"""API request throughput and latency under concurrent clients, before and after a change::

    .venv/bin/python -m bench.api_load                         # this checkout only; ~10 min
    git worktree add /tmp/openft-before <commit>
    .venv/bin/python -m bench.api_load --code before=/tmp/openft-before --code after=.

What a tenant's scripts and dashboards do to the API: ``GET`` of one job, the job list, the
model list, and a mix of those with uploads and job creates, each at 10, 100 and 500
concurrent clients (every client sends its next request as soon as the last is answered),
on SQLite and on PostgreSQL. The API runs as ``make run`` runs it (uvicorn, one process, the
scheduler inside) against a real SeaweedFS and a real database; Ray is absent, so created
jobs are made to fail validation at once (their file has too few rows) and the scheduler's
work stays bounded. The database is seeded with 500 jobs of the tenant (50 succeeded, so
the model list has 50 fine-tuned models) and 500 of another tenant.

Each ``--code LABEL=PATH`` is a checkout whose ``service`` package the API process runs
(this checkout's ``.venv`` interpreter), so "before" and "after" are measured in the same
run on the same machine. The load generator (``bench/load_client.py``) is a process of its
own. Reported per row: requests per second, p50 and p99 of answered requests, and errors by
kind (``500 plain`` is a non-enveloped error; ``timeout`` is no answer in 30 s). Results go
to ``bench/results/api_load.md`` and ``.json``; the issue's targets (PostgreSQL, ``GET`` job:
>= 1,000 req/s at 100 clients with p99 <= 250 ms, p99 <= 20 ms at 10 clients, no errors at
500) are checked on the last ``--code``, exit status 2 when one is missed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import MetaData, Table, create_engine, insert

from bench.environment import REPO, code_version, machine, versions
from devstack.databases import database_for
from devstack.processes import free_port, http_ok, start, start_seaweedfs, wait_until
from devstack.tiny_model import build_tiny_llama

RESULTS = REPO / "bench" / "results"
KEY_A, ORG_A = "sk-bench-a", "org-bench-a"
KEY_B, ORG_B = "sk-bench-b", "org-bench-b"
S3 = {"bucket": "openft-bench", "access_key": "bench", "secret_key": "bench-secret"}
SCENARIOS = ("get_job", "list_jobs", "list_models", "mix")
SEEDED_JOBS, SUCCEEDED_JOBS = 500, 50

SERVE = """
import service, uvicorn
print("serving", service.__file__, flush=True)
from service.main import create_app
from service.settings import Settings
settings = Settings()
uvicorn.run(create_app(settings), host="127.0.0.1", port=settings.port, log_level="warning",
            access_log=False)
"""


def chat_line(i: int) -> str:
    return json.dumps({"messages": [{"role": "user", "content": f"What is {i} + {i}?"},
                                    {"role": "assistant", "content": str(2 * i)}]})


def jsonl(n: int) -> bytes:
    return ("\n".join(chat_line(i) for i in range(n)) + "\n").encode()


def seed(url: str, training_file: str) -> list[str]:
    """Jobs of both tenants, straight into the database (as months of use leave them); the
    ids of the tenant's jobs."""
    rows, now = [], int(time.time()) - 86_400
    for org in (ORG_A, ORG_B):
        for i in range(SEEDED_JOBS):
            succeeded = i < SUCCEEDED_JOBS
            job_id = f"ftjob-bench{org[-1]}{i:06d}"
            rows.append({
                "id": job_id, "organization": org, "model": "tiny-llama",
                "training_file": training_file, "validation_file": None,
                "status": "succeeded" if succeeded else "failed",
                "created_at": now + i, "finished_at": now + i + 60,
                "hyperparameters": {"n_epochs": 3, "batch_size": 1,
                                    "learning_rate_multiplier": 2.0},
                "method": {"type": "supervised"}, "suffix": None, "seed": i,
                "job_metadata": {"team": "bench"}, "model_key": f"bench{org[-1]}{i:06d}",
                "fine_tuned_model":
                    f"ft:tiny-llama:{org}::bench{i:04d}" if succeeded else None,
                "trained_tokens": 1000 if succeeded else None,
                "error": None if succeeded else {"code": "invalid_n_examples",
                                                 "message": "too few", "param": "training_file"},
                "result_files": [], "events_cursor": 0, "run_count": 1,
                "created_seq": (now + i) * 10**9,
            })
    engine = create_engine(url)
    jobs = Table("jobs", MetaData(), autoload_with=engine)  # the checkout's own schema
    with engine.begin() as conn:
        conn.execute(insert(jobs), [{k: v for k, v in r.items() if k in jobs.c} for r in rows])
    engine.dispose()
    return [r["id"] for r in rows if r["organization"] == ORG_A]


def start_api(code: Path, env: dict[str, str], log_dir: Path):
    """The API of the checkout ``code``: its ``service`` package first on the path."""
    serve = f"import sys; sys.path.insert(0, {str(code)!r})\n" + SERVE
    proc = start("api", [sys.executable, "-c", serve], log_dir, env)
    port = env["OPENFT_PORT"]
    wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), "the API", proc, 120)
    return proc


def requests_of(scenario: str, job_paths: list[str], upload: bytes,
                create_body: dict[str, Any]) -> list[dict[str, Any]]:
    get_job = {"method": "GET", "path": "", "paths": job_paths}
    list_jobs = {"method": "GET", "path": "/v1/fine_tuning/jobs?limit=20"}
    list_models = {"method": "GET", "path": "/v1/models"}
    return {
        "get_job": [get_job],
        "list_jobs": [list_jobs],
        "list_models": [list_models],
        "mix": [{**get_job, "weight": 0.4}, {**list_jobs, "weight": 0.2},
                {**list_models, "weight": 0.2},
                {"method": "POST", "path": "/v1/files", "upload": upload.decode(),
                 "weight": 0.1},
                {"method": "POST", "path": "/v1/fine_tuning/jobs", "json_body": create_body,
                 "weight": 0.1}],
    }[scenario]


def load(base_url: str, requests: list[dict[str, Any]], concurrency: int,
         seconds: float) -> dict[str, Any]:
    plan = {"base_url": base_url, "api_key": KEY_A, "requests": requests,
            "concurrency": concurrency, "seconds": seconds}
    out = subprocess.run([sys.executable, "-m", "bench.load_client"], input=json.dumps(plan),
                         capture_output=True, text=True, cwd=REPO, timeout=seconds + 180,
                         check=True)
    return json.loads(out.stdout)


def measure(label: str, code: Path, db_kind: str, s3_url: str, model_dir: Path,
            scenarios: list[str], concurrency: list[int], seconds: float,
            tmp: Path) -> list[dict[str, Any]]:
    rows = []
    run_dir = Path(tempfile.mkdtemp(prefix=f"{label}-{db_kind}-", dir=tmp))
    with database_for(db_kind, run_dir, prefix="openft_bench") as url:
        port = free_port()
        env = {**os.environ, "OPENFT_PORT": str(port), "OPENFT_DATA_DIR": str(run_dir / "data"),
               "OPENFT_DATABASE_URL": url, "OPENFT_S3_ENDPOINT_URL": s3_url,
               "OPENFT_S3_BUCKET": S3["bucket"], "OPENFT_S3_ACCESS_KEY": S3["access_key"],
               "OPENFT_S3_SECRET_KEY": S3["secret_key"],
               "OPENFT_RAY_ADDRESS": "http://127.0.0.1:9", "OPENFT_SERVING_URL":
               "http://127.0.0.1:9", "OPENFT_API_KEYS": f"{KEY_A}={ORG_A},{KEY_B}={ORG_B}",
               "OPENFT_DEFAULT_BASE_MODEL": "false",
               "OPENFT_BASE_MODELS": json.dumps({"tiny-llama": str(model_dir)})}
        proc = start_api(code, env, run_dir)
        try:
            base = f"http://127.0.0.1:{port}"
            auth = {"Authorization": f"Bearer {KEY_A}"}
            with httpx.Client(base_url=base, headers=auth, timeout=60) as http:
                files = [http.post("/v1/files", data={"purpose": "fine-tune"},
                                   files={"file": ("f.jsonl", body)}).raise_for_status().json()
                         for body in (jsonl(20), jsonl(2))]
            job_ids = seed(url, files[0]["id"])
            job_paths = [f"/v1/fine_tuning/jobs/{j}" for j in job_ids]
            create = {"model": "tiny-llama", "training_file": files[1]["id"]}  # fails at once
            for scenario in scenarios:
                for n in concurrency:
                    result = load(base, requests_of(scenario, job_paths, jsonl(20), create), n,
                                  seconds)
                    row = {"code": label, "database": db_kind, "scenario": scenario,
                           "clients": n, **result}
                    print(_line(row), flush=True)
                    rows.append(row)
        finally:
            proc.stop()
    shutil.rmtree(run_dir, ignore_errors=True)
    return rows


def _errors(errors: dict[str, int]) -> str:
    return ", ".join(f"{v} {k}" for k, v in errors.items()) or "0"


def _line(r: dict[str, Any]) -> str:
    return (f"| {r['code']} | {r['database']} | {r['scenario']} | {r['clients']} | "
            f"{r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {_errors(r['errors'])} |")


def check_targets(rows: list[dict[str, Any]], label: str) -> list[str]:
    """The issue's targets, on PostgreSQL, for the checkout ``label``; what was missed."""
    def row(n: int) -> dict[str, Any] | None:
        return next((r for r in rows if r["code"] == label and r["database"] == "postgresql"
                     and r["scenario"] == "get_job" and r["clients"] == n), None)

    missed = []
    if (r := row(100)) and (r["rps"] < 1000 or r["p99_ms"] > 250):
        missed.append(f"GET job at 100 clients: {r['rps']:.0f} req/s, p99 {r['p99_ms']:.0f} ms "
                      "(target >= 1000 req/s, p99 <= 250 ms)")
    if (r := row(10)) and r["p99_ms"] > 20:
        missed.append(f"GET job at 10 clients: p99 {r['p99_ms']:.1f} ms (target <= 20 ms)")
    for r in rows:
        if r["code"] == label and r["clients"] == 500 and r["errors"]:
            missed.append(f"{r['database']} {r['scenario']} at 500 clients: "
                          f"{_errors(r['errors'])} (target: no errors)")
    return missed


def render(rows: list[dict[str, Any]], meta: dict[str, Any], missed: list[str],
           extra: str) -> str:
    lines = [
        "# API load", "",
        f"{meta['date']} · {meta['machine']} · code {meta['code']} · {meta['seconds']:.0f} s "
        "per row after 1 s of warm-up · " + ", ".join(f"{k} {v}" for k, v in
                                                       meta["versions"].items()), "",
        "Checkouts: " + ", ".join(f"`{k}` = {v}" for k, v in meta["checkouts"].items()), "",
        "| code | database | scenario | clients | req/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|",
        *(_line(r) for r in rows), "",
        "Targets (PostgreSQL, last checkout): "
        + ("all met." if not missed else "missed: " + "; ".join(missed)),
    ]
    if extra:
        lines += ["", extra]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.api_load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", action="append", metavar="LABEL=PATH",
                        help="a checkout to measure (repeatable; default: this one as 'after')")
    parser.add_argument("--database", action="append", choices=["sqlite", "postgresql"])
    parser.add_argument("--clients", type=int, action="append",
                        help="concurrent clients (repeatable; default 10, 100, 500)")
    parser.add_argument("--scenario", action="append", choices=SCENARIOS)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--note", default="", help="text appended to the markdown")
    args = parser.parse_args(argv)
    codes = [tuple(c.split("=", 1)) for c in args.code or [f"after={REPO}"]]
    databases = args.database or ["sqlite", "postgresql"]
    concurrency = args.clients or [10, 100, 500]
    scenarios = args.scenario or list(SCENARIOS)
    tmp = Path(tempfile.mkdtemp(prefix="api-load-"))
    rows: list[dict[str, Any]] = []
    s3_port = free_port()
    s3 = start_seaweedfs(tmp / "s3", s3_port, S3["bucket"], S3["access_key"], S3["secret_key"],
                         tmp)
    try:
        model_dir = build_tiny_llama(tmp / "tiny-llama")
        print("| code | database | scenario | clients | req/s | p50 ms | p99 ms | errors |")
        for db_kind in databases:
            for label, path in codes:
                rows += measure(label, Path(path).resolve(), db_kind,
                                f"http://127.0.0.1:{s3_port}", model_dir, scenarios,
                                concurrency, args.seconds, tmp)
    finally:
        s3.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    meta = {"date": dt.date.today().isoformat(), "machine": machine(), "code": code_version(),
            "seconds": args.seconds, "checkouts": dict(codes),
            "versions": versions("fastapi", "starlette", "uvicorn", "sqlalchemy",
                                 "psycopg2-binary")}
    missed = check_targets(rows, codes[-1][0])
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "api_load.json").write_text(json.dumps({**meta, "rows": rows}, indent=1))
    (args.results_dir / "api_load.md").write_text(render(rows, meta, missed, args.note))
    print("\n".join(missed) or "targets met")
    return 2 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
