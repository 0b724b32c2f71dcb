"""vllm_cpu.lora: the grouped ops equal vLLM's torch ops except that a no-adapter token (index
-1) gets no LoRA delta, and on a real engine a base-model request answers the same alone and
batched with adapter requests, while adapter requests answer as with vLLM's ops."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from vllm.lora.layers import LoRAMapping
from vllm.lora.ops import torch_ops as vllm_ops
from vllm.lora.punica_wrapper import punica_cpu
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

from tests.serving.lora import REPO_ROOT, build_lora_adapter
from vllm_cpu import lora as cpu_lora
from vllm_cpu.vllm_private import PUNICA_CPU_OPS

SLOTS = 4  # max_loras: the weights' first dim; index -1 means "no adapter"
HIDDEN, RANK = 64, 8

INDEX_BATCHES = {
    "one adapter": [2, 2, 2, 2, 2],
    "mixed, with no-adapter tokens": [0, -1, 3, 3, 1, -1, 0, 2, 2, 1],
    "no adapter only": [-1, -1, -1],
    "one token per adapter": [3, 0, -1, 2, 1],  # the per-token path
    "one token": [1],
}
# sgmv: (tokens per sequence, one index per sequence)
SEQUENCE_BATCHES = {
    "one adapter": ([5, 2], [1, 1]),
    "mixed, with no-adapter sequences": ([3, 1, 4, 2, 6], [1, -1, 1, 3, 0]),
    "one token per sequence": ([1, 1, 1, 1], [2, 0, 3, 1]),  # decode: the per-token path
    "one token per sequence, with no-adapter ones": ([1, 1, 1, 1, 1], [2, -1, 0, 3, -1]),
}
DTYPES = [torch.float32, torch.bfloat16]
TOLERANCE = {torch.float32: {"rtol": 1e-5, "atol": 1e-5},
             torch.bfloat16: {"rtol": 1.6e-2, "atol": 1.6e-2}}


def _weights(out: int, inp: int, dtype: torch.dtype, four_d: bool) -> torch.Tensor:
    """Stacked LoRA weights ``[SLOTS, (1,) out, inp]``; every slot non-zero, the last one too,
    so a wrong reading of index -1 shows."""
    w = torch.randn(SLOTS, 1, out, inp) / inp**0.5
    return (w if four_d else w.squeeze(1)).to(dtype)


def _assert_same(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    torch.testing.assert_close(ours, theirs, **TOLERANCE[ours.dtype])


def _has_no_adapter_index(args: tuple) -> bool:
    return any(isinstance(a, torch.Tensor) and not a.is_floating_point() and bool((a < 0).any())
               for a in args)


def _run_both(name: str, output: torch.Tensor, *args) -> None:
    """Run vLLM's op and ours on copies of ``output``; assert the results agree.

    With a no-adapter index in the batch the reference is vLLM's op on the weights plus one
    all-zero slot at the end: its ``weights[-1]`` then reads zeros, i.e. "no adapter adds
    nothing", which is what ours must do whatever the real last slot holds."""
    inputs, weights, *rest = args
    reference_weights = weights
    if _has_no_adapter_index(tuple(rest)):
        reference_weights = torch.cat([weights, torch.zeros_like(weights[:1])])
    theirs, ours = output.clone(), output.clone()
    getattr(vllm_ops, name)(inputs, reference_weights, theirs, *rest)
    getattr(cpu_lora, name)(inputs, weights, ours, *rest)
    _assert_same(ours, theirs)


@pytest.mark.parametrize("indices", INDEX_BATCHES.values(), ids=INDEX_BATCHES.keys())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("four_d", [False, True], ids=["3d", "4d"])
def test_bgmv_shrink_matches_vllm(indices, dtype, four_d) -> None:
    torch.manual_seed(0)
    idx = torch.tensor(indices)
    x = torch.randn(len(indices), HIDDEN, dtype=dtype)
    a = _weights(RANK, HIDDEN, dtype, four_d)
    # punica_cpu's buffer is fp32 whatever the model dtype; test the model dtype too. Not
    # zeros, so that a row the op must overwrite (with zeros for no-adapter tokens) shows.
    for out_dtype in {torch.float32, dtype}:
        _run_both("bgmv_shrink", torch.randn(len(indices), RANK, dtype=out_dtype),
                  x, a, idx, 0.5)


@pytest.mark.parametrize("indices", INDEX_BATCHES.values(), ids=INDEX_BATCHES.keys())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("four_d", [False, True], ids=["3d", "4d"])
@pytest.mark.parametrize("add_inputs", [True, False])
@pytest.mark.parametrize("pad", [0, 6, -6], ids=["same width", "output wider", "lora wider"])
def test_bgmv_expand_matches_vllm(indices, dtype, four_d, add_inputs, pad) -> None:
    torch.manual_seed(0)
    idx = torch.tensor(indices)
    buffer = torch.randn(len(indices), RANK)  # fp32, as punica_cpu allocates it
    b = _weights(HIDDEN, RANK, dtype, four_d)
    y = torch.randn(len(indices), HIDDEN + pad, dtype=dtype)
    _run_both("bgmv_expand", y, buffer, b, idx, add_inputs)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("add_inputs", [True, False])
def test_bgmv_expand_one_row_fills_every_output_row_like_vllm(dtype, add_inputs) -> None:
    """vLLM's ``limit`` rule: a one-row result is broadcast over a taller output."""
    torch.manual_seed(0)
    y = torch.randn(3, HIDDEN, dtype=dtype)
    _run_both("bgmv_expand", y, torch.randn(1, RANK), _weights(HIDDEN, RANK, dtype, True),
              torch.tensor([-1]), add_inputs)


@pytest.mark.parametrize("indices", INDEX_BATCHES.values(), ids=INDEX_BATCHES.keys())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("four_d", [False, True], ids=["3d", "4d"])
@pytest.mark.parametrize("add_inputs", [True, False])
@pytest.mark.parametrize("offset", [0, 32, 64])
def test_bgmv_expand_slice_matches_vllm(indices, dtype, four_d, add_inputs, offset) -> None:
    torch.manual_seed(0)
    idx = torch.tensor(indices)
    b = _weights(32, RANK, dtype, four_d)
    y = torch.randn(len(indices), 96, dtype=dtype)
    _run_both("bgmv_expand_slice", y, torch.randn(len(indices), RANK), b, idx, offset, 32,
              add_inputs)


def _sequence_meta(seq_lens: list[int], seq_indices: list[int]) -> tuple:
    """The metadata tuple punica passes to sgmv ops (``prefill_metadata``)."""
    lens = torch.tensor(seq_lens)
    starts = torch.cumsum(lens, 0) - lens
    return starts, lens, torch.tensor(seq_indices), len(seq_lens), max(seq_lens), sum(seq_lens)


@pytest.mark.parametrize("batch", SEQUENCE_BATCHES.values(), ids=SEQUENCE_BATCHES.keys())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("four_d", [False, True], ids=["3d", "4d"])
@pytest.mark.parametrize("add_inputs", [True, False])
def test_sgmv_ops_match_vllm(batch, dtype, four_d, add_inputs) -> None:
    torch.manual_seed(0)
    meta = _sequence_meta(*batch)
    tokens = meta[-1]
    x = torch.randn(tokens, HIDDEN, dtype=dtype)
    buffer = torch.randn(tokens, RANK)
    _run_both("sgmv_shrink", torch.randn(tokens, RANK), x, _weights(RANK, HIDDEN, dtype, four_d),
              *meta, 2.0)
    _run_both("sgmv_expand", torch.randn(tokens, HIDDEN, dtype=dtype), buffer,
              _weights(HIDDEN, RANK, dtype, four_d), *meta, add_inputs)
    _run_both("sgmv_expand_slice", torch.randn(tokens, 96, dtype=dtype), buffer,
              _weights(32, RANK, dtype, four_d), *meta, 32, 32, add_inputs)


@pytest.mark.parametrize("add_inputs", [True, False])
def test_no_adapter_tokens_get_no_delta_where_vllm_adds_the_last_slots(add_inputs) -> None:
    """vLLM's CPU ops read index -1 as ``weights[-1]``, the last slot: a no-adapter token gets
    that slot's adapter. Ours leave it alone; adapter tokens in the same batch are unchanged."""
    torch.manual_seed(0)
    indices = torch.tensor([-1, SLOTS - 1, 0])
    buffer = torch.randn(3, RANK)
    b = _weights(HIDDEN, RANK, torch.float32, True)
    y = torch.randn(3, HIDDEN)
    theirs, ours = y.clone(), y.clone()
    vllm_ops.bgmv_expand(buffer, b, theirs, indices, add_inputs)
    cpu_lora.bgmv_expand(buffer, b, ours, indices, add_inputs)

    no_adapter_row = y[0] if add_inputs else torch.zeros(HIDDEN)
    _assert_same(ours[0], no_adapter_row)
    assert not torch.allclose(theirs[0], no_adapter_row)
    _assert_same(ours[1:], theirs[1:])


# --- the wrapper: GroupedPunicaWrapperCPU against vLLM's PunicaWrapperCPU --------------------

WRAPPER_SLOTS = 16
# lora ids per token (0: no adapter; id i sits in slot i - 1), as LoRAMapping takes them
STEPS = {
    "decode, 1 adapter": [3] * 16,
    "decode, 4 adapters": [1 + t % 4 for t in range(16)],
    "decode, 16 adapters": [16 - t for t in range(16)],
    "decode, slot order": list(range(1, 17)),  # rows need no reordering
    "decode, no-adapter tokens": [0, 2, 0, 7, 7, 1, 0, 2],
    "decode, far-apart slots": [1, 16, 1, 16, 1, 16],
    "decode, no adapter": [0, 0, 0],
    "prefill, 4 adapters": [1 + (t // 32) % 4 for t in range(256)],
    "prefill, uneven": [1] * 60 + [0] * 10 + [2] * 3 + [16] * 30,
}
SLICES = {"qkv": (48, 16, 16), "o": (48,), "gate_up": (64, 64)}
# (model dtype, adapter weights' dtype), as vLLM's lora_dtype can pair them
WRAPPER_DTYPES = {"fp32": (torch.float32, torch.float32),
                  "bf16": (torch.bfloat16, torch.bfloat16),
                  "bf16 model, fp32 adapters": (torch.bfloat16, torch.float32),
                  "fp32 model, bf16 adapters": (torch.float32, torch.bfloat16)}


def _wrappers(lora_ids: list[int]) -> tuple[PunicaWrapperCPU, PunicaWrapperCPU]:
    """vLLM's wrapper and ours after the same ``update_metadata`` (V1: always is_prefill)."""
    wrappers = []
    for cls in (PunicaWrapperCPU, cpu_lora.GroupedPunicaWrapperCPU):
        wrapper = cls(len(lora_ids), len(lora_ids), device="cpu")
        wrapper.update_metadata(LoRAMapping(lora_ids, lora_ids, is_prefill=True),
                                list(range(1, WRAPPER_SLOTS + 1)), WRAPPER_SLOTS,
                                vocab_size=128)
        wrappers.append(wrapper)
    return wrappers[0], wrappers[1]


def _stacked(slices: tuple[int, ...], dtype: torch.dtype) -> tuple[tuple, tuple]:
    """Per slice ``lora_a [slots, 1, rank, in]`` and ``lora_b [slots, 1, out, rank]``, every
    slot non-zero (the last one too, where vLLM's ops read index -1)."""
    a = tuple(torch.randn(WRAPPER_SLOTS, 1, RANK, HIDDEN, dtype=dtype) / HIDDEN**0.5
              for _ in slices)
    b = tuple(torch.randn(WRAPPER_SLOTS, 1, out, RANK, dtype=dtype) / RANK**0.5
              for out in slices)
    return a, b


def _assert_rounded_from(ours: torch.Tensor, exact: torch.Tensor, before: torch.Tensor) -> None:
    """``ours`` equals ``exact`` (vLLM's wrapper on fp32 copies of the same tensors) as
    ``_assert_same`` does for fp32 outputs; a bf16 output within the bf16 roundings of the
    fp32 delta and of the sum it is added into."""
    if ours.dtype == torch.float32:
        return _assert_same(ours, exact)
    delta = exact - before.float()
    error = (ours.float() - exact).abs()
    assert bool((error <= 2**-7 * (delta.abs() + exact.abs()) + 1e-6).all()), error.max()


def _fp32(tensors: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return tuple(t.float() for t in tensors)


@pytest.fixture
def stock_ops_with_zero_for_no_adapter(monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM's wrapper with our ops: vLLM's arithmetic, and no delta for index -1 (the fix,
    tested against vLLM's ops above), so the two wrappers must agree everywhere."""
    for name in PUNICA_CPU_OPS:
        monkeypatch.setattr(punica_cpu, name, getattr(cpu_lora, name))


@pytest.mark.usefixtures("stock_ops_with_zero_for_no_adapter")
@pytest.mark.parametrize("lora_ids", STEPS.values(), ids=STEPS.keys())
@pytest.mark.parametrize("dtypes", WRAPPER_DTYPES.values(), ids=WRAPPER_DTYPES.keys())
@pytest.mark.parametrize("layer", ["qkv", "gate_up"])
def test_add_lora_linear_matches_vllm_wrapper(lora_ids, dtypes, layer) -> None:
    dtype, lora_dtype = dtypes
    torch.manual_seed(0)
    theirs, ours = _wrappers(lora_ids)
    slices = SLICES[layer]
    a, b = _stacked(slices, lora_dtype)
    x = torch.randn(len(lora_ids), HIDDEN, dtype=dtype)
    y = torch.randn(len(lora_ids), sum(slices), dtype=dtype)
    # vLLM's wrapper on fp32 copies: the products ours accumulates in fp32
    y_theirs, y_ours = y.float(), y.clone()
    theirs.add_lora_linear(y_theirs, x.float(), _fp32(a), _fp32(b), 0.5, slices)
    ours.add_lora_linear(y_ours, x, a, b, 0.5, slices)
    _assert_rounded_from(y_ours, y_theirs, y)
    no_adapter = torch.tensor(lora_ids) == 0
    _assert_same(y_ours[no_adapter], y[no_adapter])


@pytest.mark.usefixtures("stock_ops_with_zero_for_no_adapter")
@pytest.mark.parametrize("lora_ids", STEPS.values(), ids=STEPS.keys())
@pytest.mark.parametrize("dtypes", WRAPPER_DTYPES.values(), ids=WRAPPER_DTYPES.keys())
@pytest.mark.parametrize("layer", ["o", "qkv"])
def test_add_shrink_then_add_expand_match_vllm_wrapper(lora_ids, dtypes, layer) -> None:
    """As RowParallelLinearWithLoRA calls them: an fp32 ``[slices, tokens, rank]`` buffer,
    then ``add_expand`` from it at an offset (and with vLLM's ``add_input`` spelling)."""
    dtype, lora_dtype = dtypes
    torch.manual_seed(0)
    theirs, ours = _wrappers(lora_ids)
    slices = SLICES[layer]
    a, b = _stacked(slices, lora_dtype)
    tokens = len(lora_ids)
    x = torch.randn(tokens, HIDDEN, dtype=dtype)
    buffer = torch.randn(len(slices), tokens, RANK)  # rows the shrink must overwrite
    buffers = [buffer.clone(), buffer.clone()]
    y = torch.randn(tokens, sum(slices) + 8, dtype=dtype)
    # vLLM's wrapper on fp32 copies, as in test_add_lora_linear_matches_vllm_wrapper
    outputs = [y.float(), y.clone()]
    for wrapper, buf, x_in, out, a_in, b_in in zip(
            (theirs, ours), buffers, (x.float(), x), outputs, (_fp32(a), a), (_fp32(b), b),
            strict=True):
        wrapper.add_shrink(buf, x_in, a_in, 2.0)
        wrapper.add_expand(out, buf, b_in, slices, offset_start=8, add_input=True)
    _assert_same(buffers[1], buffers[0])
    _assert_rounded_from(outputs[1], outputs[0], y)


@pytest.mark.usefixtures("stock_ops_with_zero_for_no_adapter")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_add_expand_without_add_inputs_matches_vllm_wrapper(dtype) -> None:
    torch.manual_seed(0)
    lora_ids = STEPS["decode, no-adapter tokens"]
    theirs, ours = _wrappers(lora_ids)
    _, b = _stacked(SLICES["gate_up"], dtype)
    buffer = torch.randn(2, len(lora_ids), RANK)
    y = torch.randn(len(lora_ids), 128, dtype=dtype)
    y_theirs, y_ours = y.clone(), y.clone()
    theirs.add_expand(y_theirs, buffer, b, SLICES["gate_up"], add_inputs=False)
    ours.add_expand(y_ours, buffer, b, SLICES["gate_up"], add_inputs=False)
    _assert_same(y_ours, y_theirs)


@pytest.mark.parametrize("dtypes", WRAPPER_DTYPES.values(), ids=WRAPPER_DTYPES.keys())
@pytest.mark.parametrize("layer", ["qkv", "o"])
def test_adapter_loaded_into_a_slot_is_used_at_the_next_call(dtypes, layer) -> None:
    """vLLM loads an adapter by copying it into the stacked weights in place (``set_lora``)
    and unloads it by zeroing the slot (``reset_lora``): the next step must use the new
    weights, or none, for that slot's tokens and leave the other slots' alone."""
    dtype, lora_dtype = dtypes
    torch.manual_seed(0)
    lora_ids = STEPS["decode, 4 adapters"]
    _, ours = _wrappers(lora_ids)
    slices = SLICES[layer]
    a, b = _stacked(slices, lora_dtype)
    x = torch.randn(16, HIDDEN, dtype=dtype)

    def delta(wrapper: PunicaWrapperCPU) -> torch.Tensor:
        out = torch.zeros(16, sum(slices), dtype=dtype)
        wrapper.add_lora_linear(out, x, a, b, 1.0, slices)
        return out

    before = delta(ours)
    slot = 2  # lora id 3: tokens 2, 6, 10, 14
    reloaded = torch.arange(16) % 4 == slot
    new_a, new_b = _stacked(slices, lora_dtype)
    for i in range(len(slices)):  # as vLLM's set_lora writes a new adapter into the slot
        a[i][slot, 0, :, :].copy_(new_a[i][slot, 0])
        b[i][slot, 0, :, :].copy_(new_b[i][slot, 0])
    after = delta(ours)
    _assert_same(after, delta(_wrappers(lora_ids)[1]))  # a wrapper that never saw the old one
    assert not torch.allclose(after[reloaded], before[reloaded])
    _assert_same(after[~reloaded], before[~reloaded])
    for i in range(len(slices)):  # vLLM's reset_lora
        a[i][slot] = 0
        b[i][slot] = 0
    unloaded = delta(ours)
    assert bool(unloaded[reloaded].eq(0).all())
    _assert_same(unloaded[~reloaded], before[~reloaded])


VOCAB = 300


def _lm_head(dtype: torch.dtype, dead_slots: tuple[int, ...] = ()) -> tuple[torch.Tensor, ...]:
    """LogitsProcessorWithLoRA's stacked weights: ``[slots, 1, rank, hidden]`` and
    ``[slots, 1, vocab, rank]``; ``dead_slots`` hold adapters that leave the LM head alone
    (zeros, as vLLM's set_lora leaves them)."""
    a = torch.randn(WRAPPER_SLOTS, 1, RANK, HIDDEN, dtype=dtype) / HIDDEN**0.5
    b = torch.randn(WRAPPER_SLOTS, 1, VOCAB, RANK, dtype=dtype) / RANK**0.5
    for slot in dead_slots:
        a[slot], b[slot] = 0, 0
    return a, b


@pytest.mark.usefixtures("stock_ops_with_zero_for_no_adapter")
@pytest.mark.parametrize("lora_ids", STEPS.values(), ids=STEPS.keys())
@pytest.mark.parametrize("dtypes", WRAPPER_DTYPES.values(), ids=WRAPPER_DTYPES.keys())
@pytest.mark.parametrize("dead_slots", [(), (0, 1, 2, 15)], ids=["trained", "some untrained"])
def test_add_lora_logits_matches_vllm_wrapper(lora_ids, dtypes, dead_slots) -> None:
    """The LM head's LoRA on the sampled rows, with slots whose adapter did not train it."""
    dtype, lora_dtype = dtypes
    torch.manual_seed(0)
    theirs, ours = _wrappers(lora_ids)
    a, b = _lm_head(lora_dtype, dead_slots)
    x = torch.randn(len(lora_ids), HIDDEN, dtype=dtype)
    logits = torch.randn(len(lora_ids), VOCAB, dtype=dtype)
    exact, y_ours = logits.float(), logits.clone()
    theirs.add_lora_logits(exact, x.float(), a.float(), b.float(), 1.0)
    ours.add_lora_logits(y_ours, x, a, b, 1.0)
    _assert_rounded_from(y_ours, exact, logits)
    untouched = torch.isin(torch.tensor(lora_ids) - 1, torch.tensor([-1, *dead_slots]))
    assert bool(y_ours[untouched].eq(logits[untouched]).all())


@pytest.mark.parametrize("dtypes", WRAPPER_DTYPES.values(), ids=WRAPPER_DTYPES.keys())
def test_lm_head_adapter_loaded_into_an_untrained_slot_is_used_at_the_next_call(dtypes) -> None:
    """The zero-slot check is kept until vLLM writes into the stacked weights again."""
    dtype, lora_dtype = dtypes
    torch.manual_seed(0)
    lora_ids = STEPS["decode, 16 adapters"]
    _, ours = _wrappers(lora_ids)
    a, b = _lm_head(lora_dtype, dead_slots=(3,))
    x = torch.randn(16, HIDDEN, dtype=dtype)

    def delta(wrapper: PunicaWrapperCPU) -> torch.Tensor:
        out = torch.zeros(16, VOCAB, dtype=dtype)
        wrapper.add_lora_logits(out, x, a, b, 1.0)
        return out

    slot_3 = torch.tensor(lora_ids) == 4
    before = delta(ours)
    assert bool(before[slot_3].eq(0).all()) and not bool(before[~slot_3].eq(0).any())
    new_a, new_b = _lm_head(lora_dtype)
    a[3, 0].copy_(new_a[3, 0])  # vLLM's set_lora
    b[3, 0].copy_(new_b[3, 0])
    after = delta(ours)
    _assert_same(after, delta(_wrappers(lora_ids)[1]))
    assert not bool(after[slot_3].eq(0).all())
    _assert_same(after[~slot_3], before[~slot_3])
    a[3], b[3] = 0, 0  # vLLM's reset_lora
    assert bool(delta(ours)[slot_3].eq(0).all())


def test_wrapper_built_by_vllm_compiles_the_kernels_before_the_first_step() -> None:
    """vLLM's LoRA manager passes its LoRAConfig: the wrapper compiles the kernels for the
    adapters' dtype then, during engine start, so no adapter request waits on numba."""
    from vllm.config.lora import LoRAConfig

    from vllm_cpu import lora_kernels as cpu_lora_kernels

    config = LoRAConfig(max_lora_rank=8, lora_dtype=torch.bfloat16)
    cpu_lora.GroupedPunicaWrapperCPU(16, 16, device="cpu", lora_config=config)

    # lora_linear(x, rows, slots, lora_a, lora_bt, scale, y, offset), per model dtype
    compiled = {(str(sig[0].dtype), str(sig[3].dtype.dtype), sig[3].count)
                for sig in cpu_lora_kernels.lora_linear.signatures}
    assert {(model, "uint16", slices) for model in ("float32", "uint16")
            for slices in (1, 2, 3)} <= compiled


def test_register_installs_the_wrapper_once() -> None:
    from vllm.lora.punica_wrapper.punica_selector import get_punica_wrapper
    from vllm.platforms import current_platform

    platform = type(current_platform)
    saved_ops = {name: getattr(punica_cpu, name) for name in PUNICA_CPU_OPS}
    saved_wrapper = platform.__dict__["get_punica_wrapper"]
    try:
        cpu_lora.register()
        cpu_lora.register()
        wrapper = get_punica_wrapper(8, 8, device="cpu")
        assert type(wrapper) is cpu_lora.GroupedPunicaWrapperCPU
        assert punica_cpu.bgmv_shrink is cpu_lora.bgmv_shrink
    finally:
        platform.get_punica_wrapper = saved_wrapper
        for name, fn in saved_ops.items():
            setattr(punica_cpu, name, fn)


# --- a real engine, plugin on and off -------------------------------------------------------

ENGINE_SCRIPT = r'''
import json, os, sys

def patched_module(worker):
    from vllm.lora.punica_wrapper import punica_cpu
    from vllm.platforms import current_platform
    return os.getpid(), punica_cpu.bgmv_shrink.__module__, current_platform.get_punica_wrapper()

if __name__ == "__main__":
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    model, adapters = sys.argv[1], sys.argv[2:]
    # As many slots as adapters: every slot, the last one too, holds an adapter, which is
    # where vLLM's CPU ops read the no-adapter index -1 (see vllm_cpu.lora).
    llm = LLM(model=model, dtype="float32", enable_lora=True, max_lora_rank=8,
              max_loras=len(adapters), max_model_len=256, block_size=32,
              kv_cache_memory_bytes=256 * 2**20, enforce_eager=True, seed=0)
    prompts = ["What is the capital of France?", "Hello! How can I help you today?",
               "Extract the name, age and city as JSON.", "The quick brown fox"]
    loras = [None] + [LoRARequest(f"a{i}", i + 1, path) for i, path in enumerate(adapters)]
    # Every prompt with every adapter and without one, in ONE batch: mixed indices.
    requests = [(p, lora) for p in prompts for lora in loras]
    greedy = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    outs = llm.generate([p for p, _ in requests], greedy,
                        lora_request=[lora for _, lora in requests], use_tqdm=False)
    base_alone = llm.generate(prompts, greedy, use_tqdm=False)
    print("RESULT " + json.dumps({
        "tokens": [list(o.outputs[0].token_ids) for o in outs],
        "base_alone": [list(o.outputs[0].token_ids) for o in base_alone],
        "driver_pid": os.getpid(),
        "engine": llm.collective_rpc(patched_module),
    }))
'''


def _engine_run(tmp: Path, model: Path, adapters: list[Path], plugins: str | None) -> dict:
    script = tmp / "engine_run.py"
    script.write_text(ENGINE_SCRIPT)
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_ALLOW_INSECURE_SERIALIZATION="1")
    env.pop("VLLM_PLUGINS", None)
    if plugins is not None:
        env["VLLM_PLUGINS"] = plugins
    run = subprocess.run([sys.executable, str(script), str(model), *map(str, adapters)],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    line = next(ln for ln in run.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


@pytest.mark.slow
def test_base_requests_answer_the_same_whatever_the_batch_and_adapters_as_with_vllm_ops(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    adapters = [build_lora_adapter(tiny_model_dir, tmp_path / f"a{seed}", seed=seed)
                for seed in (1, 2)]
    on = _engine_run(tmp_path, tiny_model_dir, adapters, plugins=None)
    # openft_cpu_amx stays on: without it vLLM's CPU attention dies of SIGILL on AMX CPUs
    off = _engine_run(tmp_path, tiny_model_dir, adapters,
                      plugins="lora_filesystem_resolver,openft_cpu_amx")

    # The patch reached the process that runs the model, which is not the driver.
    assert [(module, wrapper) for _, module, wrapper in on["engine"]] == [
        ("vllm_cpu.lora", "vllm_cpu.lora.GroupedPunicaWrapperCPU")]
    assert all(pid != on["driver_pid"] for pid, *_ in on["engine"])
    assert [(module, wrapper) for _, module, wrapper in off["engine"]] == [
        ("vllm.lora.ops.torch_ops.lora_ops",
         "vllm.lora.punica_wrapper.punica_cpu.PunicaWrapperCPU")]

    # Per prompt: (base, a1, a2), all submitted in one batch.
    on_batched = [on["tokens"][i : i + 3] for i in range(0, len(on["tokens"]), 3)]
    off_batched = [off["tokens"][i : i + 3] for i in range(0, len(off["tokens"]), 3)]
    # A base request batched with adapter requests answers as it does alone ...
    assert [base for base, _, _ in on_batched] == on["base_alone"] == off["base_alone"]
    # ... which vLLM's own CPU ops get wrong once the last slot holds an adapter.
    assert [base for base, _, _ in off_batched] != off["base_alone"]
    # Adapter requests answer as with vLLM's ops, and the adapters are really applied.
    assert [adapted for _, *adapted in on_batched] == [adapted for _, *adapted in off_batched]
    assert all(len({tuple(t) for t in answers}) == 3 for answers in on_batched)
