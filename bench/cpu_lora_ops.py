"""vLLM's CPU multi-LoRA ops against vllm_cpu/lora.py's, one decoder layer::

    nice .venv/bin/python -m bench.cpu_lora_ops        # ~1 min on 2 CPUs

Shapes are SmolLM2-135M's (hidden 576, intermediate 1536, 9 query and 3 KV heads of 64) with
rank-16 LoRA on every linear layer, bf16 or fp32 weights. The ops are reached the way a Llama
layer reaches them in vLLM 0.32's V1 engine: through ``PunicaWrapperCPU`` after
``update_metadata`` with ``is_prefill=True`` (V1 always takes the sgmv ops), calling
``add_lora_linear`` for qkv (3 slices), o, gate_up (2) and down (without tensor parallelism
the row-parallel layers call it too): 7 shrinks and 7 expand-slices per layer. The three
implementations: vLLM's wrapper and ops; vLLM's wrapper with our ops rebound in
``punica_cpu``; our ``GroupedPunicaWrapperCPU`` (what the plugin installs: numba kernels,
``vllm_cpu/lora_kernels.py``). Weights of one layer, so they sit in the CPU's caches: the
served numbers (bench/results/serving.md) read 30 layers' worth each step.
A second table times the LM head's LoRA (``add_lora_logits``) on a decode step's 16 sampled
rows. Batches: decode (16 sequences of 1 token) and prefill (16 sequences of 32 tokens), their
sequences spread round-robin over 1, 4 or 16 adapters (16 LoRA slots). For scale, "base" times
the layer's 7 base linear layers on the same tokens. Reported: best ms over repeats, all four
interleaved; 1 torch thread unless ``--threads`` (vLLM's worker uses all cores, but 2-thread
timings swing widely while anything else runs). The table goes to stdout and
bench/results/cpu_lora_ops.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from types import ModuleType

import torch
from vllm.lora.layers import LoRAMapping
from vllm.lora.ops import torch_ops as vllm_ops
from vllm.lora.punica_wrapper import punica_cpu
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

from bench.environment import code_version, machine
from vllm_cpu import lora as cpu_lora
from vllm_cpu.vllm_private import PUNICA_CPU_OPS

RESULTS = Path(__file__).parent / "results" / "cpu_lora_ops.md"
HIDDEN, INTERMEDIATE, KV, RANK, SLOTS, VOCAB = 576, 1536, 192, 16, 16, 49152
# (input width, output widths of the slices) of each LoRA'd layer in one decoder layer
LAYERS = {"qkv": (HIDDEN, (HIDDEN, KV, KV)), "o": (HIDDEN, (HIDDEN,)),
          "gate_up": (HIDDEN, (INTERMEDIATE, INTERMEDIATE)), "down": (INTERMEDIATE, (HIDDEN,))}
BATCHES = {"decode": (16, 1), "prefill": (16, 32)}  # sequences, tokens per sequence
ADAPTERS = (1, 4, 16)
# (model dtype, adapter weights' dtype): serving keeps adapters in bf16 (ServingConfig.lora_dtype)
# with a bf16 engine and, on CPUs without bf16 units, an fp32 one (vllm_cpu/dtype.py)
DTYPES = {"bf16": (torch.bfloat16, torch.bfloat16),
          "fp32, bf16 LoRA": (torch.float32, torch.bfloat16),
          "fp32": (torch.float32, torch.float32)}
# (punica wrapper class, ops bound in punica_cpu) per implementation
IMPLEMENTATIONS = {"vllm": (PunicaWrapperCPU, vllm_ops),
                   "ops": (PunicaWrapperCPU, cpu_lora),
                   "ours": (cpu_lora.GroupedPunicaWrapperCPU, cpu_lora)}


@contextmanager
def punica_ops(ops: ModuleType) -> Iterator[None]:
    """``PunicaWrapperCPU`` calls ``ops``' functions inside the block."""
    saved = {name: getattr(punica_cpu, name) for name in PUNICA_CPU_OPS}
    for name in saved:
        setattr(punica_cpu, name, getattr(ops, name))
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(punica_cpu, name, fn)


def layer_steps(seqs: int, seq_len: int, adapters: int, dtype: torch.dtype,
                lora_dtype: torch.dtype) -> dict[str, Callable[[], None]]:
    """One decoder layer's LoRA calls for a batch, as vLLM's LoRA layers make them, per
    implementation, on the same weights (in ``lora_dtype``) and inputs (in ``dtype``)."""
    tokens = seqs * seq_len
    lora_ids = [1 + seq % adapters for seq in range(seqs) for _ in range(seq_len)]
    weights = {name: (tuple(torch.randn(SLOTS, 1, RANK, inp, dtype=lora_dtype) / inp**0.5
                            for _ in outs),
                      tuple(torch.randn(SLOTS, 1, out, RANK, dtype=lora_dtype) / RANK**0.5
                            for out in outs))
               for name, (inp, outs) in LAYERS.items()}
    inputs = {width: torch.randn(tokens, width, dtype=dtype) for width in (HIDDEN, INTERMEDIATE)}
    steps = {}
    for impl in IMPLEMENTATIONS:
        punica, ops = wrapper(impl, lora_ids, seqs)
        steps[f"{impl}_ms"] = partial(with_ops, ops, partial(_step, punica, weights, inputs,
                                                              tokens, dtype))
    return steps


def wrapper(impl: str, lora_ids: list[int], seqs: int) -> tuple[PunicaWrapperCPU, ModuleType]:
    """``impl``'s punica wrapper after ``update_metadata`` for one token per id in
    ``lora_ids`` (V1: always is_prefill), and the ops it runs with."""
    wrapper_cls, ops = IMPLEMENTATIONS[impl]
    punica = wrapper_cls(len(lora_ids), seqs, device="cpu")
    punica.update_metadata(LoRAMapping(lora_ids, lora_ids, is_prefill=True),
                           list(range(1, SLOTS + 1)), SLOTS, vocab_size=VOCAB)
    return punica, ops


def _step(punica: PunicaWrapperCPU, weights: dict, inputs: dict, tokens: int,
          dtype: torch.dtype) -> None:
    for name, (inp, outs) in LAYERS.items():
        a, b = weights[name]
        y = torch.zeros(tokens, sum(outs), dtype=dtype)
        punica.add_lora_linear(y, inputs[inp], a, b, 1.0, outs)


def lm_head_steps(adapters: int, dtype: torch.dtype,
                  lora_dtype: torch.dtype) -> dict[str, Callable[[], None]]:
    """A decode step's LM-head LoRA (``add_lora_logits``, 16 sampled rows), per
    implementation; ours twice: adapters that left the LM head alone (zeros in their slots,
    PEFT's "all-linear") and adapters that trained it."""
    seqs = BATCHES["decode"][0]
    lora_ids = [1 + seq % adapters for seq in range(seqs)]
    trained = (torch.randn(SLOTS, 1, RANK, HIDDEN, dtype=lora_dtype) / HIDDEN**0.5,
               torch.randn(SLOTS, 1, VOCAB, RANK, dtype=lora_dtype) / RANK**0.5)
    untrained = (torch.zeros_like(trained[0]), torch.zeros_like(trained[1]))
    x = torch.randn(seqs, HIDDEN, dtype=dtype)
    logits = torch.zeros(seqs, VOCAB, dtype=dtype)
    cases = {"vllm_ms": ("vllm", untrained), "ops_ms": ("ops", untrained),
             "ours_ms": ("ours", untrained), "ours_trained_ms": ("ours", trained)}
    steps = {}
    for name, (impl, (a, b)) in cases.items():
        punica, ops = wrapper(impl, lora_ids, seqs)
        steps[name] = partial(with_ops, ops, partial(punica.add_lora_logits, logits, x, a, b,
                                                      1.0))
    head = torch.randn(VOCAB, HIDDEN, dtype=dtype)
    steps["base_ms"] = partial(torch.nn.functional.linear, x, head)
    return steps


def with_ops(ops: ModuleType, step: Callable[[], None]) -> None:
    with punica_ops(ops):
        step()


def base_step(tokens: int, dtype: torch.dtype) -> Callable[[], None]:
    """The same layer's base linear layers (7 matmuls), for scale."""
    weights = [torch.randn(out, inp, dtype=dtype)
               for inp, outs in LAYERS.values() for out in outs]
    inputs = {width: torch.randn(tokens, width, dtype=dtype) for width in (HIDDEN, INTERMEDIATE)}

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


Row = dict[str, float | int | str]


def run(budget_s: float) -> tuple[list[Row], list[Row]]:
    """Rows of the decoder-layer table and of the LM-head table."""
    torch.manual_seed(0)
    layer_rows: list[Row] = []
    head_rows: list[Row] = []
    for dtype_name, (dtype, lora_dtype) in DTYPES.items():
        for batch, (seqs, seq_len) in BATCHES.items():
            for adapters in ADAPTERS:
                ms = best_ms(layer_steps(seqs, seq_len, adapters, dtype, lora_dtype)
                             | {"base_ms": base_step(seqs * seq_len, dtype)}, budget_s)
                layer_rows.append({"dtype": dtype_name, "batch": batch,
                                   "tokens": seqs * seq_len, "adapters": adapters, **ms})
        for adapters in ADAPTERS:
            ms = best_ms(lm_head_steps(adapters, dtype, lora_dtype), budget_s)
            head_rows.append({"dtype": dtype_name, "adapters": adapters, **ms})
    return layer_rows, head_rows


def report(rows: list[Row], head_rows: list[Row]) -> str:
    lines = [
        "# vLLM's CPU multi-LoRA ops vs vllm_cpu/lora.py (one decoder layer)",
        "",
        f"Run by `python -m bench.cpu_lora_ops` on {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC;"
        f" {machine()}, torch {torch.__version__} with {torch.get_num_threads()} threads, "
        f"load average {os.getloadavg()[0]:.2f} at the end; code at {code_version()}.",
        "",
        "SmolLM2-135M shapes, rank-16 LoRA on q, k, v, o, gate, up, down; per layer"
        " `PunicaWrapperCPU.add_lora_linear` for qkv, o, gate_up and down, i.e. 7"
        " `sgmv_shrink` + 7 `sgmv_expand_slice`, as vLLM 0.32's V1 engine calls them without"
        " tensor parallelism. dtype \"fp32, bf16 LoRA\": an fp32 model whose adapter weights"
        " vLLM holds in bf16 (`--lora-dtype bfloat16`, serving's default; serving runs fp32"
        " engines on CPUs without bf16 units). \"vLLM\": vLLM's `PunicaWrapperCPU` and ops;"
        " \"our ops\": vLLM's wrapper with vllm_cpu/lora.py's ops bound in `punica_cpu`;"
        " \"our wrapper\": `GroupedPunicaWrapperCPU` (numba kernels,"
        " vllm_cpu/lora_kernels.py), what the plugin installs. Speed-up: vLLM / our"
        " wrapper. Best ms per layer over interleaved repeats, one layer's weights (hot in the"
        " CPU's caches); \"base\" is the layer's 7 base matmuls on the same tokens.",
        "",
        "| dtype | batch | tokens | adapters | vLLM ms | our ops ms | our wrapper ms "
        "| speed-up | base linears ms | LoRA/base: vLLM | our ops | our wrapper |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        v, p, o, b = (float(r[k]) for k in ("vllm_ms", "ops_ms", "ours_ms", "base_ms"))
        lines.append(f"| {r['dtype']} | {r['batch']} | {r['tokens']} | {r['adapters']} "
                     f"| {v:.2f} | {p:.2f} | {o:.2f} | {v / o:.1f}x | {b:.2f} "
                     f"| {v / b:.2f} | {p / b:.2f} | {o / b:.2f} |")
    lines += [
        "",
        "## The LM head",
        "",
        "vLLM wraps the LM head for LoRA whenever LoRA is on and calls"
        " `PunicaWrapperCPU.add_lora_logits` on every step's sampled rows (here a decode step:"
        f" 16 rows, vocab {VOCAB}). \"untrained\": the adapters in the slots left the LM head"
        " alone (zeros, as after vLLM's `set_lora` of a PEFT \"all-linear\" adapter), the case"
        " of every adapter openft trains by default; \"trained\": random LM-head LoRA in every"
        " slot, our wrapper only. \"base\": the LM head's own matmul on the same rows.",
        "",
        "| dtype | adapters | vLLM ms | our ops ms | our wrapper ms | speed-up "
        "| our wrapper, trained head ms | base LM head ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in head_rows:
        v, p, o, t, b = (float(r[k]) for k in ("vllm_ms", "ops_ms", "ours_ms",
                                               "ours_trained_ms", "base_ms"))
        lines.append(f"| {r['dtype']} | {r['adapters']} | {v:.2f} | {p:.2f} | {o:.3f} "
                     f"| {v / o:.0f}x | {t:.2f} | {b:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("::")[0])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: steadier on a shared machine)")
    parser.add_argument("--budget-s", type=float, default=1.5, help="timing per table row")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    text = report(*run(args.budget_s))
    print(text)
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
