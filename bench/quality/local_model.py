"""Answers from a model the shared deployment does not serve: a full fine-tune.

openft's serving app holds LoRA adapters on shared base models; a full fine-tune's weights are
for a dedicated deployment, and the chat API says so with a 400. The runner scores one the way
a user gets at it: it downloads the model through the API (``GET /v1/models/{id}/download``,
a ``.tar.gz`` of its Hugging Face folder), then answers the held-out items in a child process
with transformers' greedy ``generate``, exactly as the TRL peer's answers are made
(:func:`bench.quality.trl_peer.answer`).
"""

from __future__ import annotations

import json
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from openai import OpenAI

from bench.environment import REPO
from bench.quality.child import run_child
from bench.quality.tasks import Example
from service.cli.client import Api, Config

MODULE = "bench.quality.local_model"
NOTE = ("answered by transformers from the model downloaded through the API: a full "
        "fine-tune is not served by the shared deployment")


def download(client: OpenAI, model: str, into: Path) -> Path:
    """The model's folder, fetched as ``openft models download`` fetches it (the CLI's
    :meth:`~service.cli.client.Api.download_model`, with the client's base URL and key) and
    unpacked in ``into``."""
    into.mkdir(parents=True, exist_ok=True)
    with httpx.Client() as http:  # Api keeps the client it is given open: close it here
        api = Api(Config(base_url=str(client.base_url), api_key=client.api_key,
                         http_client=http))
        archive = api.download_model(model, into / "model.tar.gz", on_progress=lambda *_: None)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    archive.unlink()
    (folder,) = [p for p in into.iterdir() if p.is_dir()]  # one folder, named for the model
    return folder


def answers(model_dir: Path, items: Sequence[Example], *, max_tokens: int, threads: int,
            work: Path, timeout: float) -> list[str]:
    """Greedy answers of the model in ``model_dir`` to ``items``, from a child process."""
    config = {"model_dir": str(model_dir), "max_tokens": max_tokens,
              "heldout": [{"messages": i.messages, "tools": i.tools} for i in items]}
    done = run_child(MODULE, config, work, threads=threads, timeout=timeout,
                     what="local answers")
    return list(done["answers"])


def child(config: dict[str, Any]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench.quality.trl_peer import answer

    torch.set_num_threads(config["threads"])
    tokenizer = AutoTokenizer.from_pretrained(config["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(config["model_dir"], dtype=torch.float32)
    texts = answer(model, tokenizer, config["heldout"], config["max_tokens"])
    Path(config["out"]).write_text(json.dumps({"answers": texts}))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    child(json.loads(Path(sys.argv[1]).read_text()))
