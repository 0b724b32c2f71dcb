"""TRL at its defaults on the same rows, as the peer a practitioner would compare openft with.

The runner starts this module in a child process (``python -m bench.quality.trl_peer
CONFIG``), so TRL, datasets and torch are imported only there, and only when it runs. The
child trains one task, answers its held-out items with greedy ``generate`` and writes the raw
texts; the runner scores them with the same functions as the API's replies.

**Left at TRL's and PEFT's defaults** (trl 1.16): ``SFTTrainer`` for supervised tasks,
``DPOTrainer`` for the DPO task, with ``SFTConfig`` / ``DPOConfig`` defaults for everything
that shapes the result: learning rate (2e-5 SFT, 1e-6 DPO), epochs (3), batch size (8 per
device, no accumulation), linear schedule without warm-up, ``max_length`` 1024, DPO's beta
(0.1) and loss, no packing; the reference model of DPO is the base with the adapter disabled
(TRL's choice under ``peft_config``). LoRA is ``LoraConfig(task_type="CAUSAL_LM")`` with every
PEFT default: r 8, alpha 8, dropout 0, PEFT's target modules for the architecture (Llama:
``q_proj``, ``v_proj``).

**Set, and why:**

- ``output_dir`` (required), ``seed`` (the job's seed), ``report_to="none"`` and
  ``save_strategy="no"`` (no tracker, no checkpoints: neither changes the weights),
  ``disable_tqdm``.
- Rows as TRL's *conversational prompt-completion* format (``prompt``: every message before
  the trained assistant message, ``completion``: that message; DPO: ``prompt``, ``chosen``,
  ``rejected``), ``weight`` keys dropped. TRL's default for a ``messages`` column trains on
  every token, prompts included (``assistant_only_loss`` is ``False``, and ``True`` needs
  ``{% generation %}`` markers SmolLM2's template lacks); for prompt-completion rows its
  default ``completion_only_loss`` trains the completion only, which is what openft trains
  (the last assistant message; earlier ones carry ``weight: 0`` in these tasks).
- Weights loaded in float32 (as openft trains them), ``bf16`` as openft decides on this
  machine (``training.torch_private.cpu_has_bf16`` on a CPU, on with CUDA): TRL's default
  ``bf16=True`` would otherwise emulate bf16 on a CPU that lacks it. Without CUDA also
  ``use_cpu``: transformers refuses ``bf16`` on a CPU that has it unless told the CPU is meant.
- torch threads = ``threads`` (the machine's CPUs by default; the stack is stopped first).

Scoring: the tokenizer's chat template with ``add_generation_prompt=True`` (and the item's
``tools``), ``generate`` greedy with ``max_new_tokens`` = the API arms' ``max_tokens``,
stopping at the generation config's and the tokenizer's end-of-sequence tokens, new tokens
decoded without special tokens, as vLLM returns them. Tokens: the real (unpadded) input
tokens of every training step, a DPO line counted once per output as openft counts it.
Time: the ``train()`` call.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.environment import REPO
from bench.quality.child import run_child
from bench.quality.tasks import TaskData

MODULE = "bench.quality.trl_peer"
NEEDED = ("trl", "datasets", "peft")


def missing() -> str | None:
    """Why the peer cannot run here (a package it imports is absent), or None."""
    absent = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if absent:
        return (f"skipped: {', '.join(absent)} not installed (the `bench` extra: "
                f"pip install -e \".[bench]\")")
    return None


def _clean(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k != "weight"}


def sft_row(row: dict[str, Any]) -> dict[str, Any]:
    """A supervised upload row as TRL's conversational prompt-completion row.

    >>> row = sft_row({"messages": [{"role": "user", "content": "2+2?"},
    ...                             {"role": "assistant", "content": "4", "weight": 1}]})
    >>> row["prompt"], row["completion"]
    ([{'role': 'user', 'content': '2+2?'}], [{'role': 'assistant', 'content': '4'}])
    """
    messages = row["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    out: dict[str, Any] = {"prompt": [_clean(m) for m in messages[:last]],
                           "completion": [_clean(messages[last])]}
    if row.get("tools"):
        out["tools"] = row["tools"]
    return out


def dpo_row(row: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's preference line as TRL's conversational preference row.

    >>> dpo_row({"input": {"messages": [{"role": "user", "content": "Q"}]},
    ...          "preferred_output": [{"role": "assistant", "content": "Answer: A"}],
    ...          "non_preferred_output": [{"role": "assistant", "content": "It is A."}]})["chosen"]
    [{'role': 'assistant', 'content': 'Answer: A'}]
    """
    out: dict[str, Any] = {"prompt": [_clean(m) for m in row["input"]["messages"]],
                           "chosen": [_clean(m) for m in row["preferred_output"]],
                           "rejected": [_clean(m) for m in row["non_preferred_output"]]}
    if row["input"].get("tools"):
        out["tools"] = row["input"]["tools"]
    return out


def trl_rows(data: TaskData) -> list[dict[str, Any]]:
    return [dpo_row(r) if data.method == "dpo" else sft_row(r) for r in data.train]


@dataclass(frozen=True)
class PeerRun:
    """What the child reports: its answers (texts, in item order) and its costs."""

    answers: list[str]
    tokens: int
    seconds: float
    settings: dict[str, Any]


def run_peer(data: TaskData, model_dir: Path, *, seed: int, max_tokens: int, threads: int,
             work: Path, timeout: float) -> PeerRun:
    """Train and answer one task in a child process; raise with its log tail if it fails."""
    config = {"model_dir": str(model_dir), "method": data.method, "rows": trl_rows(data),
              "heldout": [{"messages": i.messages, "tools": i.tools} for i in data.heldout],
              "seed": seed, "max_tokens": max_tokens, "output_dir": str(work / "trainer")}
    return PeerRun(**run_child(MODULE, config, work, threads=threads, timeout=timeout,
                               what="TRL peer"))


# --- the child -------------------------------------------------------------------------


def _device_args() -> dict[str, bool]:
    """``bf16`` and ``use_cpu`` of the trainer's arguments on this machine."""
    import torch

    from training.torch_private import cpu_has_bf16

    cuda = torch.cuda.is_available()
    return {"bf16": bool(cuda or cpu_has_bf16()), "use_cpu": not cuda}


def _trainer(config: dict[str, Any], model: Any, tokenizer: Any, counted: list[int]) -> Any:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    dpo = config["method"] == "dpo"
    base, args_cls = (DPOTrainer, DPOConfig) if dpo else (SFTTrainer, SFTConfig)

    class Counting(base):  # type: ignore[misc, valid-type]
        """Counts the real (unpadded) input tokens of each step; trains as ``base`` does."""

        def training_step(self, model: Any, inputs: dict[str, Any], *rest: Any,
                          **kwargs: Any) -> Any:
            mask = inputs.get("attention_mask")
            counted[0] += int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
            return super().training_step(model, inputs, *rest, **kwargs)

    args = args_cls(output_dir=config["output_dir"], seed=config["seed"], report_to="none",
                    save_strategy="no", disable_tqdm=True, **_device_args())
    return Counting(model=model, args=args, train_dataset=Dataset.from_list(config["rows"]),
                    processing_class=tokenizer, peft_config=LoraConfig(task_type="CAUSAL_LM"))


def answer(model: Any, tokenizer: Any, items: Sequence[dict[str, Any]],
           max_tokens: int) -> list[str]:
    """Greedy answers to ``items`` (``messages`` and ``tools``): the module docstring's
    "Scoring" paragraph."""
    import torch

    eos = model.generation_config.eos_token_id
    stop = {*(eos if isinstance(eos, list) else [eos] if eos is not None else []),
            tokenizer.eos_token_id} - {None}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stop)
    model.eval()
    answers = []
    with torch.no_grad():
        for item in items:
            inputs = tokenizer.apply_chat_template(
                item["messages"], tools=item.get("tools"), add_generation_prompt=True,
                return_tensors="pt", return_dict=True).to(model.device)
            out = model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False,
                                 eos_token_id=sorted(stop), pad_token_id=pad)
            new = out[0, inputs["input_ids"].shape[1]:]
            answers.append(tokenizer.decode(new, skip_special_tokens=True))
    return answers


def child(config: dict[str, Any]) -> None:
    """Train one task with TRL's defaults, answer its held-out items, write ``config.out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(config["threads"])
    tokenizer = AutoTokenizer.from_pretrained(config["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(config["model_dir"], dtype=torch.float32)
    counted = [0]
    trainer = _trainer(config, model, tokenizer, counted)
    started = time.monotonic()
    trainer.train()
    seconds = time.monotonic() - started
    a = trainer.args
    peft = trainer.model.peft_config["default"]
    settings = {"trainer": type(trainer).__mro__[1].__name__, "learning_rate": a.learning_rate,
                "num_train_epochs": a.num_train_epochs,
                "per_device_train_batch_size": a.per_device_train_batch_size,
                "gradient_accumulation_steps": a.gradient_accumulation_steps,
                "lr_scheduler_type": getattr(a.lr_scheduler_type, "value",
                                             a.lr_scheduler_type),
                "warmup_steps": a.warmup_steps,
                "max_length": a.max_length, "bf16": a.bf16, "beta": getattr(a, "beta", None),
                "lora_r": peft.r, "lora_alpha": peft.lora_alpha,
                "lora_target_modules": sorted(peft.target_modules or []),
                "steps": trainer.state.global_step}
    answers = answer(trainer.model, tokenizer, config["heldout"], config["max_tokens"])
    Path(config["out"]).write_text(json.dumps({
        "answers": answers, "tokens": counted[0], "seconds": round(seconds, 1),
        "settings": settings}))


def described(settings: dict[str, Any] | None, reason: str | None) -> str:
    """The peer in the report's words: what its defaults resolved to by trainer, or why it
    did not run."""
    if reason:
        return f"TRL peer {reason}"
    if not settings:
        return "TRL at its defaults (see `bench/quality/trl_peer.py`)"
    shown = {trainer: {k: v for k, v in values.items() if k != "trainer"}
             for trainer, values in settings.items()}
    resolved = "; ".join(f"{trainer}: `{json.dumps(values)}`" for trainer, values in shown.items())
    return f"TRL at its defaults (see `bench/quality/trl_peer.py`), resolved to {resolved}"


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    child(json.loads(Path(sys.argv[1]).read_text()))
