"""The web page at /ui/ in real headless chromium, on the API served on a real port.

Jobs, events and checkpoints are written to the database as the scheduler would; serving is
a stub answering chat. What is checked is what a person sees: the sign-in refusing a wrong
key, their organization's jobs only, a job page with its hyperparameters, events and
checkpoints (the best marked), a loss curve that gains points as metrics events arrive, and a
checkpoint's chat box answering.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from devstack.databases import database_for
from service.db import CheckpointRow, JobEventRow, JobRow
from service.ids import new_id, now
from service.lifecycle import add_event
from service.main import build_context, create_app
from service.models.naming import checkpoint_name, fine_tuned_model_name
from tests.service.conftest import KEY_A, KEY_B, api_settings, chat_jsonl, chat_line
from tests.service.fake_ray import FakeRay
from tests.support.asgi_server import served
from tests.support.browser import Relay, chromium, screenshot
from tests.support.http_stub import http_stub

TIMEOUT_MS = 30_000

EMAIL_ROW = json.dumps({"messages": [{"role": "user", "content": "Who do I write to?"},
                                     {"role": "assistant", "content": "jane.doe@example.com"}]})
TRAINING = chat_jsonl(12) + (chat_line(3) + "\n" + EMAIL_ROW + "\n").encode()
"""12 rows, a 13th repeating row 4 (line 4), and a 14th with an e-mail address."""


class ChatStub(BaseHTTPRequestHandler):
    """Serving's chat endpoint: answers naming the (internal) model it was asked for."""

    def do_POST(self) -> None:  # noqa: N802 - the http.server hook's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        answer = json.dumps({
            "id": "chatcmpl-stub", "object": "chat.completion", "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "message": {
                "role": "assistant",
                "content": f"stub answer to {body['messages'][-1]['content']}"}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    """SQLite only: the API's SQL is tested on both databases elsewhere; this is the page."""
    with database_for("sqlite", tmp_path) as url:
        yield url


@pytest.fixture
def served_api(tmp_path, s3_server, tiny_model_dir, database_url) -> Iterator[tuple[str, object]]:
    """The API on a real port (the browser's origin) and its app, for writing rows."""
    with http_stub(ChatStub) as serving_url:
        settings = api_settings(tmp_path, tiny_model_dir, database_url, s3_server,
                                serving_url=serving_url)
        app = create_app(settings, run_scheduler=False,
                         context=lambda s: build_context(s, ray=FakeRay()))
        with served(app) as url:
            yield url, app


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


def api(url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=f"{url}/v1", headers={"Authorization": f"Bearer {key}"})


def running_job(url: str, app, key: str, *, suffix: str) -> str:
    """A job created through the API and moved to running, as a launch would."""
    with api(url, key) as c:
        file_id = c.post("/files", data={"purpose": "fine-tune"},
                         files={"file": ("train.jsonl", TRAINING)}).json()["id"]
        job = c.post("/fine_tuning/jobs", json={
            "model": "tiny-llama", "training_file": file_id, "suffix": suffix,
            "hyperparameters": {"n_epochs": 3, "learning_rate_multiplier": 2}}).json()
    with app.state.ctx.db.session() as s:
        s.get(JobRow, job["id"]).status = "running"
        add_event(s, job["id"], "Fine-tuning job started")
    return job["id"]


def add_metrics(app, job_id: str, steps: range, total: int = 30) -> None:
    with app.state.ctx.db.session() as s:
        for step in steps:
            data = {"step": step, "total_steps": total, "train_loss": 3.0 / step}
            if step % 5 == 0:
                data["valid_loss"] = 3.2 / step
            add_event(s, job_id, f"Step {step}/{total}: training loss={3.0 / step:.3f}",
                      type_="metrics", data=data)


def add_checkpoints(app, job_id: str) -> list[str]:
    """Checkpoints at steps 5 and 10, the step-5 one with the lower full validation loss."""
    names = []
    with app.state.ctx.db.session() as s:
        row = s.get(JobRow, job_id)
        model = fine_tuned_model_name(row.model, row.organization, row.suffix, row.model_key)
        for step, full_valid in ((5, 0.61), (10, 0.74)):
            name = checkpoint_name(model, step)
            ckpt_id = new_id("ftckpt")
            s.add(CheckpointRow(
                id=ckpt_id, job_id=job_id, created_at=now(), step_number=step,
                fine_tuned_model_checkpoint=name, adapter_key=f"{row.model_key}-step-{step}",
                metrics={"step": step, "train_loss": 3.0 / step, "valid_loss": 3.2 / step,
                         "full_valid_loss": full_valid}))
            if step == 5:
                row.best_checkpoint = {"id": ckpt_id, "step_number": step,
                                       "fine_tuned_model_checkpoint": name,
                                       "full_valid_loss": full_valid}
            names.append(name)
    return names


def sign_in(page, url: str, key: str) -> None:
    page.goto(f"{url}/ui/")
    page.fill("#api-key", key)
    page.click("#sign-in-form button[type=submit]")


def test_assets_need_no_key_carry_a_strict_policy_and_v1_still_does(served_api):
    url, _ = served_api
    with httpx.Client(base_url=url) as c:
        page = c.get("/ui/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "unsafe-inline" not in policy
        assert '<script type="module" src="app.js">' in page.text
        script = c.get("/ui/app.js")
        assert script.headers["content-type"].startswith("text/javascript")
        assert script.headers["content-security-policy"] == policy
        assert c.get("/ui", follow_redirects=False).headers["location"] == "/ui/"
        for missing in ("/ui/nothing.js", "/ui/..%2Fguard.py", "/ui/router.py"):
            assert c.get(missing).status_code == 404, missing
        assert c.get("/v1/models").status_code == 401
        assert c.get("/v1/models", headers={"Authorization": "Bearer /ui/"}).status_code == 401


def test_page_assets_ship_in_the_wheel(tmp_path):
    """``pip install openft`` gets the page: every asset is package data of the wheel."""
    root = Path(__file__).resolve().parents[2]
    src = tmp_path / "src"
    shutil.copytree(root / "service", src / "service",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", str(src), "-w", str(tmp_path / "dist")], check=True,
                   capture_output=True, cwd=src)
    (wheel,) = (tmp_path / "dist").glob("openft-*.whl")
    with zipfile.ZipFile(wheel) as z:
        shipped = {n.removeprefix("service/ui/static/") for n in z.namelist()
                   if n.startswith("service/ui/static/")}
    assets = {p.name for p in (root / "service/ui/static").iterdir()}
    assert {"index.html", "app.js", "app.css", "sse.js", "scale.js", "chart.js"} <= assets
    assert shipped == assets


def test_pure_helpers(served_api, browser):
    """The SSE parser and the chart's scaling, run in the browser as the page runs them."""
    url, _ = served_api
    page = browser.new_page()
    page.goto(f"{url}/ui/")
    got = page.evaluate("""async () => {
      const { SSEParser } = await import("/ui/sse.js");
      const { ticks, extent, curves, path } = await import("/ui/scale.js");
      const { some } = await import("/ui/report.js");
      const whole = "id: 1\\r\\nevent: fine_tuning.job.event\\r\\ndata: {\\"a\\":\\r\\n" +
        "data: 1}\\r\\n\\r\\n: ping\\n\\nid: 2\\ndata:x\\n\\nevent: end\\ndata: {}\\n\\n";
      const bySplit = [];
      for (const size of [1, 2, 3, 7, whole.length]) {
        const p = new SSEParser();
        const out = [];
        for (let i = 0; i < whole.length; i += size) out.push(...p.push(whole.slice(i, i + size)));
        bySplit.push(out);
      }
      return {
        bySplit,
        ticks: ticks(0, 10, 5), fractional: ticks(0.42, 2.9, 5),
        flat: extent([0.5]), empty: extent([]),
        curves: curves([
          {type: "message", data: null},
          {type: "metrics", data: {step: 2, total_steps: 9, train_loss: 1.5}},
          {type: "metrics", data: {step: 1, train_loss: 2, valid_loss: 2.5}},
          {type: "metrics", data: {step: 2, train_loss: 1.4}},
        ]),
        path: path([[0, 0], [1, 1]], (x) => x * 10, (y) => 100 - y * 10),
        some: [some(["1", "2", "3"], ", ", 3), some(["1", "2", "3", "4"], ", ", 3)],
      };
    }""")
    expected = [{"id": "1", "event": "fine_tuning.job.event", "data": '{"a":\n1}'},
                {"id": "2", "event": "message", "data": "x"},
                {"id": "2", "event": "end", "data": "{}"}]
    assert all(messages == expected for messages in got["bySplit"]), got["bySplit"]
    assert got["ticks"] == [0, 2, 4, 6, 8, 10]
    assert got["fractional"] == [0.5, 1, 1.5, 2, 2.5]
    assert got["flat"] == [0.45, 0.55] and got["empty"] == [0, 1]
    assert got["curves"] == {"train": [[1, 2], [2, 1.4]], "valid": [[1, 2.5]],
                             "fullValid": [], "step": 2, "totalSteps": 9}
    assert got["path"] == "M0,100 L10,90"
    assert got["some"] == ["1, 2, 3", "1, 2, 3 and 1 more"]
    page.close()


def test_wrong_key_is_refused_at_sign_in(served_api, browser, tmp_path):
    from playwright.sync_api import expect

    url, _ = served_api
    page = browser.new_page()
    sign_in(page, url, "sk-not-a-key")
    expect(page.locator("#sign-in-error")).to_have_text("That API key was refused.",
                                                        timeout=TIMEOUT_MS)
    expect(page.locator("#view")).to_be_hidden()
    screenshot(page, tmp_path, "sign-in-refused")
    page.close()


def test_jobs_and_a_live_job_page(served_api, browser, tmp_path):
    from playwright.sync_api import expect

    url, app = served_api
    job_a = running_job(url, app, KEY_A, suffix="mine")
    job_b = running_job(url, app, KEY_B, suffix="theirs")
    with app.state.ctx.db.session() as s:  # validation resolved "auto", as it does
        row = s.get(JobRow, job_a)
        resolved = {**row.method_hyperparameters, "max_seq_length": 32}
        row.method = {"type": row.method_type, row.method_type: {"hyperparameters": resolved}}
    add_metrics(app, job_a, range(1, 11))
    best, other = add_checkpoints(app, job_a)
    requests: list[str] = []
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.on("request", lambda r: requests.append(r.url))
    page.on("pageerror", lambda e: pytest.fail(f"error on the page: {e}"))
    console_errors: list[str] = []  # a CSP refusal, a failed request: none expected
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)

    sign_in(page, url, KEY_A)
    rows = page.locator("table.jobs tbody tr")
    expect(rows).to_have_count(1, timeout=TIMEOUT_MS)
    expect(page.locator(f'tr[data-job-id="{job_a}"]')).to_contain_text("running")
    assert page.locator(f'tr[data-job-id="{job_b}"]').count() == 0
    screenshot(page, tmp_path, "jobs-list")

    page.click(f'a[href="#/jobs/{job_a}"]')
    chart = page.locator("svg.loss-chart")
    expect(chart).to_have_attribute("data-train-points", "10", timeout=TIMEOUT_MS)
    expect(chart).to_have_attribute("data-live", "stream")  # the live events, not polling
    expect(chart).to_have_attribute("data-valid-points", "2")
    expect(page.locator(".progress")).to_have_text("Step 10 of 30")
    expect(page.locator('.hyperparameters tr[data-name="n_epochs"] td')).to_have_text("3")
    expect(page.locator(".events")).to_contain_text("Fine-tuning job started")
    expect(page.locator(".events")).to_contain_text("Step 10/30")
    slot = page.locator(".report-slot")
    expect(slot.locator(".report, p:not(:has-text('Loading'))")).to_have_count(
        1, timeout=TIMEOUT_MS)
    assert slot.locator(".report").count() == 1, slot.inner_text()
    report = slot.locator(".report table.facts")
    expect(report.locator('tr[data-fact="rows"] td')).to_have_text("14")
    expect(report.locator('tr[data-fact="exact-duplicates"] td')).to_have_text("lines 4, 13")
    expect(report.locator('tr[data-fact="findings"] td')).to_contain_text("line 14: email")
    expect(report.locator('tr[data-fact="findings"]')).to_have_class("warn")
    # The report counts with the job's own max_seq_length: every ~40-token row is cut.
    expect(report.locator('tr[data-fact="truncation"] th')).to_have_text(
        "Truncated at 32 tokens")
    expect(report.locator('tr[data-fact="truncation"] td')).to_have_text(
        "14 rows (lines 1, 2, 3, 4, 5, 6, 7, 8 and 6 more)")
    best_row = page.locator(f'tr.checkpoint[data-checkpoint="{best}"]')
    expect(best_row).to_have_attribute("data-best", "true", timeout=TIMEOUT_MS)
    expect(best_row.locator(".best-badge")).to_have_text("best")
    expect(page.locator(f'tr.checkpoint[data-checkpoint="{other}"]')).to_have_attribute(
        "data-best", "false")

    # New metrics while the page is open: the curve gains them without a reload.
    add_metrics(app, job_a, range(11, 16))
    expect(chart).to_have_attribute("data-train-points", "15", timeout=TIMEOUT_MS)
    expect(chart).to_have_attribute("data-valid-points", "3")
    expect(page.locator(".progress")).to_have_text("Step 15 of 30")
    # Newest first, as the API lists them; the stream delivers them oldest first.
    expect(page.locator(".events li").first).to_contain_text("Step 15/30")
    expect(page.locator(".events li").last).to_contain_text("Created fine-tuning job")

    # The best checkpoint's chat box sends its name as the model.
    best_row.locator("button.open-chat").click()
    chat = page.locator(f'form.chat[data-model="{best}"]')
    chat.locator("input").fill("What is 2 plus one?")
    chat.locator("button[type=submit]").click()
    expect(chat.locator(".turn.assistant .content")).to_have_text(
        re.compile(r"^stub answer to What is 2 plus one\?$"), timeout=TIMEOUT_MS)
    screenshot(page, tmp_path, "job-page")
    assert console_errors == []

    # Another organization's job by its id: the page says there is none, as the API does.
    page.goto(f"{url}/ui/#/jobs/{job_b}")
    expect(page.locator("#view .error")).to_contain_text(f"No job {job_b}",
                                                         timeout=TIMEOUT_MS)
    assert not any(KEY_A in r for r in requests)  # the key never went into a URL
    page.close()


def test_live_curve_resumes_after_a_dropped_connection(served_api, browser):
    """The connection drops mid-stream: the page asks again for the events after the last
    one it had (Last-Event-ID), and the curve gains what came meanwhile, each event once."""
    from playwright.sync_api import expect

    url, app = served_api
    job_id = running_job(url, app, KEY_A, suffix="resume")
    add_metrics(app, job_id, range(1, 6))
    relay = Relay(("127.0.0.1", int(url.rsplit(":", 1)[1])))
    streams = []
    page = browser.new_page()
    page.on("request", lambda r: streams.append(r) if "stream=true" in r.url else None)
    try:
        sign_in(page, f"http://127.0.0.1:{relay.port}", KEY_A)
        page.goto(f"http://127.0.0.1:{relay.port}/ui/#/jobs/{job_id}")
        chart = page.locator("svg.loss-chart")
        expect(chart).to_have_attribute("data-train-points", "5", timeout=TIMEOUT_MS)
        with app.state.ctx.db.session() as s:
            newest = s.scalars(select(JobEventRow).where(JobEventRow.job_id == job_id)
                               .order_by(JobEventRow.seq.desc())).first().id
        before = len(streams)

        relay.cut()
        add_metrics(app, job_id, range(6, 9))

        expect(chart).to_have_attribute("data-train-points", "8", timeout=TIMEOUT_MS)
        sent = [r.headers.get("last-event-id") for r in streams]
        assert set(sent[:before]) == {None} and sent[before] == newest, sent
        # each event once: 8 steps and "Created", "Validating", "started"
        expect(page.locator(".events li")).to_have_count(8 + 3)
    finally:
        page.close()
        relay.close()


def test_models_list_shows_the_organizations_models_only(served_api, browser, tmp_path):
    from playwright.sync_api import expect

    url, app = served_api
    mine = settle(app, running_job(url, app, KEY_A, suffix="mine"))
    theirs = settle(app, running_job(url, app, KEY_B, suffix="theirs"))
    page = browser.new_page()
    sign_in(page, url, KEY_A)
    page.click('nav a[href="#/models"]')
    expect(page.locator(f'tr[data-model="{mine}"] button.download')).to_be_visible(
        timeout=TIMEOUT_MS)
    expect(page.locator('tr[data-model="tiny-llama"]')).to_be_visible()
    expect(page.locator('tr[data-model="tiny-llama"] button.download')).to_have_count(0)
    assert page.locator(f'tr[data-model="{theirs}"]').count() == 0
    screenshot(page, tmp_path, "models")
    page.close()


def settle(app, job_id: str) -> str:
    """The job succeeded, as the scheduler's settle records it; returns its model."""
    with app.state.ctx.db.session() as s:
        row = s.get(JobRow, job_id)
        row.fine_tuned_model = fine_tuned_model_name(row.model, row.organization, row.suffix,
                                                     row.model_key)
        row.status, row.finished_at, row.trained_tokens = "succeeded", now(), 100
        return row.fine_tuned_model
