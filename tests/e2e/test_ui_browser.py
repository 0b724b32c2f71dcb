"""The web page on the whole stack (``make run``'s launcher), in real headless chromium.

A person signs in, opens a job while it trains and watches the loss curve gain points, then
chats with a checkpoint (served by vLLM's CPU build under Ray Serve) and downloads the model.
Screenshots are kept under the test's tmp dir and in ``test-artifacts/ui``.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
from openai import OpenAI

from tests.support.browser import chromium, screenshot
from tests.support.jobs import wait_for_terminal

pytestmark = pytest.mark.slow

QUESTION = "What is the capital of France?"
ANSWER = "The capital of France is Paris."
SECOND_MS = 1000
POINTS = "+document.querySelector('svg.loss-chart').dataset.trainPoints"
SETTLED = json.dumps(["succeeded", "failed", "cancelled"])


def chat_file(n: int) -> bytes:
    row = {"messages": [{"role": "system", "content": "You answer geography questions."},
                        {"role": "user", "content": QUESTION},
                        {"role": "assistant", "content": ANSWER}]}
    return "".join(json.dumps(row) + "\n" for _ in range(n)).encode()


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


def points(page) -> int:
    return int(page.locator("svg.loss-chart").get_attribute("data-train-points") or 0)


def test_watch_a_job_train_then_chat_with_a_checkpoint_and_download(tiny_stack, browser, tmp_path):
    from playwright.sync_api import expect

    client = OpenAI(base_url=tiny_stack.base_url, api_key=tiny_stack.api_key, max_retries=0)
    training = client.files.create(file=("geo.jsonl", chat_file(24)), purpose="fine-tune")
    validation = client.files.create(file=("geo-valid.jsonl", chat_file(10)),
                                     purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="tiny-llama", training_file=training.id, validation_file=validation.id,
        suffix="ui", hyperparameters={"n_epochs": 3, "batch_size": 2,
                                      "learning_rate_multiplier": 20})
    origin = tiny_stack.base_url.removesuffix("/v1")
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.on("pageerror", lambda e: pytest.fail(f"error on the page: {e}"))

    page.goto(f"{origin}/ui/")
    page.fill("#api-key", tiny_stack.api_key)
    page.click("#sign-in-form button[type=submit]")
    page.click(f'a[href="#/jobs/{job.id}"]', timeout=30 * SECOND_MS)
    chart = page.locator("svg.loss-chart")
    expect(chart).to_have_attribute("data-live", "stream", timeout=30 * SECOND_MS)

    # While it trains, the curve grows point by point from the live events.
    page.wait_for_function(f"""() => {POINTS} > 0 ||
        {SETTLED}.includes(document.querySelector('.summary .status').textContent)""",
                           timeout=900 * SECOND_MS)
    status = page.locator(".summary .status").inner_text()
    assert status == "running", client.fine_tuning.jobs.retrieve(job.id).error
    first = points(page)
    page.wait_for_function(f"n => {POINTS} > n", arg=first, timeout=300 * SECOND_MS)
    assert points(page) > first
    screenshot(page, tmp_path, "e2e-job-training", full_page=False)

    job = wait_for_terminal(client, job.id, timeout=1200, every=2)
    assert job.status == "succeeded", job.error
    expect(page.locator(".summary .status")).to_have_text("succeeded", timeout=30 * SECOND_MS)
    total = client.fine_tuning.jobs.list_events(job.id, limit=1000)
    metrics = [e for e in total.data if e.type == "metrics"]
    expect(chart).to_have_attribute("data-train-points", str(len(metrics)),
                                    timeout=30 * SECOND_MS)
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    rows = page.locator("tr.checkpoint")
    expect(rows).to_have_count(len(checkpoints), timeout=30 * SECOND_MS)
    expect(page.locator("tr.checkpoint .best-badge")).to_have_count(1)

    # Chat with the best checkpoint by its own name, served on the same base URL.
    best = page.locator('tr.checkpoint[data-best="true"]')
    name = best.get_attribute("data-checkpoint")
    # The one the page marks is the job's best_checkpoint, and it answers chat (servable).
    assert name == job.model_extra["best_checkpoint"]["fine_tuned_model_checkpoint"]
    best.locator("button.open-chat").click()
    chat = page.locator(f'form.chat[data-model="{name}"]')
    chat.locator("input").fill(QUESTION)
    chat.locator("button[type=submit]").click()
    answer = chat.locator(".turn.assistant .content")
    expect(answer).to_have_count(1, timeout=600 * SECOND_MS)
    assert answer.inner_text().strip() and answer.inner_text() != "(empty answer)"
    expect(chat.locator(".error")).to_be_hidden()
    page.evaluate("window.scrollTo(0, 0)")
    page.set_viewport_size({"width": 1280, "height": 1500})  # curves down to the chat
    screenshot(page, tmp_path, "e2e-job-page", full_page=False)
    screenshot(page, tmp_path, "e2e-job-page-full")

    # The fine-tuned model downloads from the models list as its archive.
    page.click('nav a[href="#/models"]')
    row = page.locator(f'tr[data-model="{job.fine_tuned_model}"]')
    with page.expect_download(timeout=120 * SECOND_MS) as downloading:
        row.locator("button.download").click()
    archive = tmp_path / downloading.value.suggested_filename
    downloading.value.save_as(archive)
    assert archive.name.endswith(".tar.gz")
    with tarfile.open(archive) as tar:
        names = {Path(n).name for n in tar.getnames()}
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= names
    screenshot(page, tmp_path, "e2e-models")
    page.close()
