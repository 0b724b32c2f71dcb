"""vLLM's CPU multi-LoRA ops against serving/cpu_lora.py's grouped ones, one decoder layer::

    nice .venv/bin/python -m bench.cpu_lora_ops        # ~30 s on 2 CPUs

Shapes are SmolLM2-135M's (hidden 576, intermediate 1536, 9 query and 3 KV heads of 64) with
rank-16 LoRA on every linear layer, bf16 weights and punica's fp32 buffer, called the way
``PunicaWrapperCPU.add_lora_linear`` calls them in vLLM 0.32's V1 engine (always the sgmv
ops): per layer 7 shrinks and 7 expand-slices (q, k, v, o, gate, up, down). Batches: decode
(16 sequences of 1 token) and prefill (16 sequences of 32 tokens, 512 tokens), their
sequences spread round-robin over 1, 4 or 16 adapters (16 LoRA slots). For scale, the last
columns time the layer's base linear layers (the 7 bf16 matmuls) on the same tokens.
Reported: best ms over repeats, the three interleaved; 1 torch thread unless ``--threads``
(vLLM's worker uses all cores, but 2-thread timings swing widely while anything else runs).
The table goes to stdout and bench/results/cpu_lora_ops.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import ModuleType

import torch
from vllm.lora.ops import torch_ops as vllm_ops

from bench.json_extraction import code_version, machine
from serving import cpu_lora

RESULTS = Path(__file__).parent / "results" / "cpu_lora_ops.md"
HIDDEN, INTERMEDIATE, KV, RANK, SLOTS = 576, 1536, 192, 16, 16
# (input width, output width) of each LoRA'd projection in one decoder layer
PROJECTIONS = {"q": (HIDDEN, HIDDEN), "k": (HIDDEN, KV), "v": (HIDDEN, KV), "o": (HIDDEN, HIDDEN),
               "gate": (HIDDEN, INTERMEDIATE), "up": (HIDDEN, INTERMEDIATE),
               "down": (INTERMEDIATE, HIDDEN)}
BATCHES = {"decode": (16, 1), "prefill": (16, 32)}  # sequences, tokens per sequence
ADAPTERS = (1, 4, 16)
DTYPE = torch.bfloat16


def layer_step(seqs: int, seq_len: int, adapters: int) -> Callable[[ModuleType], None]:
    """One decoder layer's LoRA calls for a batch; run it with vLLM's ops module or ours."""
    tokens = seqs * seq_len
    lens = torch.full((seqs,), seq_len)
    meta = (torch.arange(seqs) * seq_len, lens, torch.arange(seqs) % adapters, seqs, seq_len,
            tokens)
    weights = {name: (torch.randn(SLOTS, 1, RANK, inp, dtype=DTYPE) / inp**0.5,
                      torch.randn(SLOTS, 1, out, RANK, dtype=DTYPE) / RANK**0.5)
               for name, (inp, out) in PROJECTIONS.items()}
    inputs = {width: torch.randn(tokens, width, dtype=DTYPE) for width in (HIDDEN, INTERMEDIATE)}

    def step(ops: ModuleType) -> None:
        for name, (inp, out) in PROJECTIONS.items():
            a, b = weights[name]
            buffer = torch.zeros(tokens, RANK)
            y = torch.zeros(tokens, out, dtype=DTYPE)
            ops.sgmv_shrink(inputs[inp], a, buffer, *meta, 1.0)
            ops.sgmv_expand_slice(buffer, b, y, *meta, 0, out, True)

    return step


def base_step(tokens: int) -> Callable[[], None]:
    """The same layer's base linear layers, for scale."""
    weights = [torch.randn(out, inp, dtype=DTYPE) for inp, out in PROJECTIONS.values()]
    inputs = {width: torch.randn(tokens, width, dtype=DTYPE) for width in (HIDDEN, INTERMEDIATE)}

    def step() -> None:
        for w in weights:
            torch.nn.functional.linear(inputs[w.shape[1]], w)

    return step


def best_ms(fns: dict[str, Callable[[], None]], budget_s: float) -> dict[str, float]:
    """Each function's best time in ms, calls interleaved so other load hits them alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm-up
    start = time.perf_counter()
    while time.perf_counter() - start < budget_s or min(map(len, times.values())) < 5:
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: 1000 * min(ts) for name, ts in times.items()}


def run(budget_s: float) -> list[dict[str, float | int | str]]:
    torch.manual_seed(0)
    rows: list[dict[str, float | int | str]] = []
    for batch, (seqs, seq_len) in BATCHES.items():
        for adapters in ADAPTERS:
            step = layer_step(seqs, seq_len, adapters)
            ms = best_ms({"vllm_ms": partial(step, vllm_ops), "ours_ms": partial(step, cpu_lora),
                          "base_ms": base_step(seqs * seq_len)}, budget_s)
            rows.append({"batch": batch, "tokens": seqs * seq_len, "adapters": adapters, **ms})
    return rows


def report(rows: list[dict[str, float | int | str]]) -> str:
    lines = [
        "# vLLM's CPU multi-LoRA ops vs serving/cpu_lora.py (one decoder layer)",
        "",
        f"Run by `python -m bench.cpu_lora_ops` on {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC;"
        f" {machine()}, torch {torch.__version__} with {torch.get_num_threads()} threads, "
        f"load average {os.getloadavg()[0]:.2f} at the end; code at {code_version()}.",
        "",
        "SmolLM2-135M shapes, rank-16 LoRA on q, k, v, o, gate, up, down (bf16, fp32 buffer);"
        " per layer 7 `sgmv_shrink` + 7 `sgmv_expand_slice`, as vLLM 0.32's V1 engine calls"
        " them. Best ms per layer over interleaved repeats; \"base\" is the layer's 7 base matmuls"
        " on the same tokens.",
        "",
        "| batch | tokens | adapters | vLLM ops ms | grouped ops ms | speed-up "
        "| base linears ms | LoRA/base, vLLM | LoRA/base, grouped |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        v, o, b = float(r["vllm_ms"]), float(r["ours_ms"]), float(r["base_ms"])
        lines.append(f"| {r['batch']} | {r['tokens']} | {r['adapters']} | {v:.2f} | {o:.2f} "
                     f"| {v / o:.1f}x | {b:.2f} | {v / b:.2f} | {o / b:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("::")[0])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: steadier on a shared machine)")
    parser.add_argument("--budget-s", type=float, default=2.0, help="timing per table row")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    text = report(run(args.budget_s))
    print(text)
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
