"""JSON extraction before and after a default fine-tune, through the official ``openai`` SDK::

    .venv/bin/python -m bench.json_extraction            # starts the stack on a temp data dir
    .venv/bin/python -m bench.json_extraction --base-url http://127.0.0.1:8000/v1 --api-key sk-...

The task: a sentence mentions a person's name, age and city; the answer is compact JSON
``{"name":...,"age":...,"city":...}``. A seeded generator writes the training and validation
files from one pool of names, cities and sentence templates, and the held-out rows from
another: the scored rows use names, cities AND sentence shapes never seen in training.

The job is created with no hyperparameters (every one ``"auto"``) on the default base model.
The base model and the fine-tuned one are then asked every held-out row at temperature 0:
*valid JSON* counts answers that ``json.loads`` turns into a dict with exactly the keys
name, age and city; *exact match* counts those whose three values equal the truth (age as an
int). The markdown table goes to stdout and to ``bench/results/json_extraction.md`` (the raw
numbers and a few answers to ``.json`` beside it). Exit status 2 when the fine-tuned model
misses the target valid-JSON rate.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from openai import OpenAI

from bench.environment import code_version, machine

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
SYSTEM = "Extract the person's name, age and city from the text. Answer with JSON only."
KEYS = ("name", "age", "city")
TARGET_VALID_JSON = 0.95
RESULTS_DIR = Path(__file__).parent / "results"

TRAIN_NAMES = (
    "Alice", "Bruno", "Chen", "Dana", "Emil", "Fatima", "Goran", "Hana", "Ivan", "Julia",
    "Kofi", "Lena", "Marco", "Nadia", "Oscar", "Priya", "Quentin", "Rosa", "Sven", "Tara",
    "Umar", "Vera", "Wei", "Ximena", "Yusuf", "Zoe", "Anton", "Bianca", "Carlos", "Daria",
    "Elif", "Felix", "Greta", "Hiro", "Ingrid", "Jonas", "Kira", "Luca", "Maya", "Nils",
    "Olga", "Pablo", "Rania", "Stefan", "Tomas", "Uma", "Viktor", "Wanda", "Yara", "Zane",
)
HELDOUT_NAMES = (
    "Aurelio", "Beatrix", "Cormac", "Dagny", "Eero", "Florentyna", "Gideon", "Henrike",
    "Isidore", "Jovana", "Kwame", "Leocadia", "Matthias", "Nkechi", "Orsolya", "Radomir",
    "Saoirse", "Thaddeus", "Ulrike", "Valentijn", "Wilhelmina", "Xiadani", "Yevgenia",
    "Zbigniew", "Ottilie",
)
TRAIN_CITIES = (
    "Berlin", "Lyon", "Oslo", "Porto", "Kyoto", "Cork", "Pune", "Ghent", "Braga", "Bergen",
    "Graz", "Bern", "Madrid", "Boston", "Lagos", "Lima", "Denver", "Seoul", "Dublin", "Nairobi",
    "Krakow", "Valencia", "Toronto", "Hamburg", "Milan", "Quito", "Tampere", "Leeds", "Austin",
    "Osaka", "Buenos Aires", "San Diego", "Cape Town", "New Delhi", "Rio de Janeiro",
)
HELDOUT_CITIES = (
    "Ljubljana", "Trondheim", "Montevideo", "Wroclaw", "Tbilisi", "Aarhus", "Chiang Mai",
    "Salt Lake City", "Kuala Lumpur", "Thessaloniki", "Bratislava", "Halifax", "Cusco",
    "Adelaide", "Nantes", "Gdansk", "Santa Cruz", "Baku", "Bordeaux", "Tallinn",
)
TRAIN_TEMPLATES = (
    "{name} is {age} and lives in {city}.",
    "{name}, {age}, lives in {city}.",
    "My neighbour {name} is {age} years old and comes from {city}.",
    "{name} ({age}) moved to {city} last year.",
    "At {age}, {name} still calls {city} home.",
    "In {city} I met {name}, who is {age}.",
    "{name} turned {age} this spring in {city}.",
    "Name: {name}. Age: {age}. City: {city}.",
    "{city} is where {name}, aged {age}, works as a teacher.",
    "Our new colleague {name} is {age} and is based in {city}.",
    "Born {age} years ago, {name} grew up in {city}.",
    "{name} lives in {city} and is {age} years old.",
)
HELDOUT_TEMPLATES = (
    "Please welcome {name}! They are {age} years young and commute from {city}.",
    "Profile -- city: {city}; age: {age}; name: {name}.",
    "According to the registry, the {age}-year-old {name} resides in {city}.",
    "{city} resident {name} just turned {age}.",
    "We interviewed {name} ({city}, {age}) about the new library.",
    "Age {age}, from {city}: that's {name}.",
    "The speaker, {name}, flew in from {city}; she is {age}.",
    "Last week {name} wrote to us from {city} to say they are {age} now.",
)


@dataclass(frozen=True)
class Person:
    name: str
    age: int
    city: str

    def answer(self) -> str:
        return json.dumps({"name": self.name, "age": self.age, "city": self.city},
                          separators=(",", ":"))


@dataclass(frozen=True)
class Row:
    text: str
    person: Person

    def messages(self, with_answer: bool = True) -> list[dict[str, str]]:
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": self.text}]
        if with_answer:
            messages.append({"role": "assistant", "content": self.person.answer()})
        return messages


@dataclass(frozen=True)
class Datasets:
    train: list[Row]
    validation: list[Row]
    heldout: list[Row]


def make_rows(rng: random.Random, n: int, names: Sequence[str], cities: Sequence[str],
              templates: Sequence[str]) -> list[Row]:
    rows = []
    for _ in range(n):
        person = Person(rng.choice(names), rng.randint(18, 90), rng.choice(cities))
        text = rng.choice(templates).format(name=person.name, age=person.age, city=person.city)
        rows.append(Row(text, person))
    return rows


def make_datasets(seed: int, n_train: int, n_validation: int, n_heldout: int) -> Datasets:
    """Train and validation rows from the training pools; held-out rows from disjoint pools."""
    for seen, unseen in ((TRAIN_NAMES, HELDOUT_NAMES), (TRAIN_CITIES, HELDOUT_CITIES),
                         (TRAIN_TEMPLATES, HELDOUT_TEMPLATES)):
        overlap = set(seen) & set(unseen)
        if overlap:
            raise ValueError(f"held-out pool overlaps training pool: {sorted(overlap)}")
    def rng(split: str) -> random.Random:  # one stream per split: sizes do not move the others
        return random.Random(f"{seed}-{split}")

    pools = (TRAIN_NAMES, TRAIN_CITIES, TRAIN_TEMPLATES)
    return Datasets(
        train=make_rows(rng("train"), n_train, *pools),
        validation=make_rows(rng("validation"), n_validation, *pools),
        heldout=make_rows(rng("heldout"), n_heldout, HELDOUT_NAMES, HELDOUT_CITIES,
                          HELDOUT_TEMPLATES),
    )


def to_jsonl(rows: Sequence[Row]) -> bytes:
    return "".join(json.dumps({"messages": r.messages()}) + "\n" for r in rows).encode()


def parse_answer(text: str) -> dict[str, Any] | None:
    """The answer as a dict when it is JSON with exactly the keys name, age, city; else None.

    >>> parse_answer('{"name":"Ada","age":36,"city":"London"}')
    {'name': 'Ada', 'age': 36, 'city': 'London'}
    >>> parse_answer('```json\\n{"name":"Ada"}\\n```') is None
    True
    """
    try:
        value = json.loads(text.strip())
    except ValueError:
        return None
    return value if isinstance(value, dict) and set(value) == set(KEYS) else None


def is_exact(answer: dict[str, Any] | None, person: Person) -> bool:
    return answer is not None and answer == {"name": person.name, "age": person.age,
                                             "city": person.city}


@dataclass
class Score:
    model: str
    n: int
    valid_json: int
    exact_match: int
    seconds: float
    answers: list[dict[str, Any]] = field(default_factory=list)
    """Every row's input, expected answer, output and verdict: what the model really wrote."""

    @property
    def valid_rate(self) -> float:
        return self.valid_json / self.n if self.n else 0.0

    @property
    def exact_rate(self) -> float:
        return self.exact_match / self.n if self.n else 0.0


def score(client: OpenAI, model: str, rows: Sequence[Row], max_tokens: int,
          concurrency: int) -> Score:
    def ask(row: Row) -> str:
        out = client.chat.completions.create(model=model, messages=row.messages(False),
                                             temperature=0, max_tokens=max_tokens)
        return out.choices[0].message.content or ""

    started = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        outputs = list(pool.map(ask, rows))
    seconds = time.monotonic() - started
    answers = [{"input": r.text, "expected": r.person.answer(), "output": o,
                "valid": (parsed := parse_answer(o)) is not None,
                "exact": is_exact(parsed, r.person)} for r, o in zip(rows, outputs, strict=True)]
    return Score(model=model, n=len(rows), seconds=round(seconds, 1),
                 valid_json=sum(a["valid"] for a in answers),
                 exact_match=sum(a["exact"] for a in answers), answers=answers)


def wait_for_job(client: OpenAI, job_id: str, timeout: float) -> tuple[Any, dict[str, float]]:
    """Poll until the job settles; also return when (seconds after create) each status began."""
    started = time.monotonic()
    seen: dict[str, float] = {}
    while time.monotonic() - started < timeout:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status not in seen:
            seen[job.status] = round(time.monotonic() - started, 1)
            print(f"  {seen[job.status]:7.1f}s  {job.status}", flush=True)
        if job.status in ("succeeded", "failed", "cancelled"):
            return job, seen
        time.sleep(3)
    raise TimeoutError(f"job {job_id} still {job.status} after {timeout:.0f}s")


def last_metrics(client: OpenAI, job_id: str) -> dict[str, Any]:
    """The newest training metrics and the newest validation metrics (events: newest first)."""
    found: dict[str, Any] = {}
    for event in client.fine_tuning.jobs.list_events(job_id, limit=100):
        data = dict(event.data or {}) if event.type == "metrics" else {}
        if data and "train" not in found:
            found["train"] = data
        if any("valid" in k for k in data) and "valid" not in found:
            found["valid"] = data
        if len(found) == 2:
            break
    return found


def run_bench(client: OpenAI, args: argparse.Namespace) -> dict[str, Any]:
    data = make_datasets(args.seed, args.n_train, args.n_validation, args.n_heldout)
    print(f"scoring base model {args.model} on {len(data.heldout)} held-out rows", flush=True)
    before = score(client, args.model, data.heldout, args.max_tokens, args.concurrency)
    print(f"  valid JSON {before.valid_json}/{before.n}, exact {before.exact_match}/{before.n}, "
          f"{before.seconds}s", flush=True)

    train = client.files.create(file=("people-train.jsonl", to_jsonl(data.train)),
                                purpose="fine-tune")
    validation = client.files.create(file=("people-valid.jsonl", to_jsonl(data.validation)),
                                     purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model=args.model, training_file=train.id,
                                         validation_file=validation.id, suffix="json-extract",
                                         seed=args.seed)
    print(f"fine-tuning job {job.id} (hyperparameters: all auto)", flush=True)
    job, timeline = wait_for_job(client, job.id, args.job_timeout)
    if job.status != "succeeded":
        raise RuntimeError(f"job {job.id} {job.status}: {job.error}")
    metrics = last_metrics(client, job.id)

    print(f"scoring fine-tuned model {job.fine_tuned_model}", flush=True)
    after = score(client, job.fine_tuned_model, data.heldout, args.max_tokens, args.concurrency)
    print(f"  valid JSON {after.valid_json}/{after.n}, exact {after.exact_match}/{after.n}, "
          f"{after.seconds}s", flush=True)
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "model": args.model,
        "code": code_version(),
        "seed": args.seed,
        "rows": {"train": len(data.train), "validation": len(data.validation),
                 "heldout": len(data.heldout)},
        "max_tokens": args.max_tokens,
        "job": {
            "id": job.id,
            "fine_tuned_model": job.fine_tuned_model,
            "hyperparameters": job.hyperparameters.model_dump() if job.hyperparameters else None,
            "method": job.method.model_dump() if job.method else None,
            "trained_tokens": job.trained_tokens,
            "server_seconds": (job.finished_at - job.created_at) if job.finished_at else None,
            "status_timeline_s": timeline,
            "last_metrics": metrics,
        },
        "scores": [asdict(before) | {"valid_rate": before.valid_rate,
                                     "exact_rate": before.exact_rate},
                   asdict(after) | {"valid_rate": after.valid_rate,
                                    "exact_rate": after.exact_rate}],
        "target_valid_json": TARGET_VALID_JSON,
        "target_met": after.valid_rate >= TARGET_VALID_JSON,
    }


def table(result: dict[str, Any]) -> str:
    lines = ["| model | valid JSON | exact match | n | seconds |", "|---|---|---|---|---|"]
    for s in result["scores"]:
        lines.append(f"| `{s['model']}` | {s['valid_json']}/{s['n']} ({s['valid_rate']:.2f}) | "
                     f"{s['exact_match']}/{s['n']} ({s['exact_rate']:.2f}) | {s['n']} | "
                     f"{s['seconds']} |")
    return "\n".join(lines)


def report(result: dict[str, Any]) -> str:
    job, rows = result["job"], result["rows"]
    verdict = "met" if result["target_met"] else "MISSED"
    method = job["method"] or {}
    hyperparameters = (method.get(method.get("type") or "", None) or {}).get(
        "hyperparameters") or job["hyperparameters"]
    metrics = job["last_metrics"]
    validation = ("" if metrics.get("valid") in (None, metrics.get("train"))
                  else f" (last validation: `{json.dumps(metrics['valid'])}`)")
    timeline = ", ".join(f"{k} at {v}s" for k, v in job["status_timeline_s"].items())
    base, tuned = result["scores"][0], result["scores"][-1]
    misses = [a for a in tuned["answers"] if not a["exact"]]
    shown = "\n".join(f"- `{a['input']}` -> `{json.dumps(a['output'])}`"
                       for a in base["answers"][:3])
    missed = "\n".join(f"- `{a['input']}` -> `{json.dumps(a['output'])}` "
                        f"(expected `{a['expected']}`)" for a in misses) or "- none"
    return f"""# JSON extraction: default fine-tune of {result["model"]}

Run by `python -m bench.json_extraction` on {result['date']}; {result['machine']};
code at {result['code']}.

{table(result)}

Target valid JSON >= {result['target_valid_json']}: **{verdict}**.

- Data (seed {result['seed']}): {rows['train']} training rows, {rows['validation']} validation rows,
  {rows['heldout']} held-out rows whose names, cities and sentence templates never appear in
  training; temperature 0, `max_tokens={result['max_tokens']}`.
- Job `{job['id']}` -> `{job['fine_tuned_model']}`; hyperparameters not given, resolved to
  `{json.dumps(hyperparameters)}`; {job['trained_tokens']} trained tokens.
- Training time: {job['server_seconds']} s from create to finished (server timestamps);
  as polled: {timeline}.
- Last metrics event{validation}: `{json.dumps(metrics.get("train"))}`.

Base model, first answers (output JSON-quoted):

{shown}

Fine-tuned model, answers that were not an exact match:

{missed}

Every answer is in `json_extraction.json`.
"""


@contextmanager
def own_stack(data_dir: Path | None) -> Iterator[tuple[str, str]]:
    """The whole stack (``make run``'s launcher) on free loopback ports; stopped on exit."""
    from devstack.stack import free_user_ports, running_stack

    temporary = data_dir is None
    data_dir = data_dir or Path(tempfile.mkdtemp(prefix="openft-bench-"))
    env = free_user_ports()
    print(f"starting the stack in {data_dir} (logs in {data_dir}/logs)", flush=True)
    started = time.monotonic()
    try:
        with running_stack(data_dir, env, timeout=1200) as stack:
            print(f"stack up in {time.monotonic() - started:.0f}s at {stack.base_url}",
                  flush=True)
            yield stack.base_url, stack.api_key
    finally:
        if temporary:
            shutil.rmtree(data_dir, ignore_errors=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.json_extraction", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", help="an already running openft (default: start one)")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"))
    p.add_argument("--data-dir", type=Path,
                   help="data dir of the stack this starts (kept); default: a temp dir, removed")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--n-train", type=int, default=200)
    p.add_argument("--n-validation", type=int, default=20)
    p.add_argument("--n-heldout", type=int, default=40)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--job-timeout", type=float, default=3600)
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    if args.base_url:
        if not args.api_key:
            raise SystemExit("--api-key (or OPENAI_API_KEY) is needed with --base-url")
        result = run_bench(OpenAI(base_url=args.base_url, api_key=args.api_key), args)
    else:
        with own_stack(args.data_dir) as (base_url, api_key):
            result = run_bench(OpenAI(base_url=base_url, api_key=api_key), args)
    result["total_seconds"] = round(time.monotonic() - started, 1)
    text = report(result) + f"\nWhole bench (stack start included): {result['total_seconds']} s.\n"
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "json_extraction.md").write_text(text)
    (args.results_dir / "json_extraction.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n" + text)
    return 0 if result["target_met"] else 2


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
