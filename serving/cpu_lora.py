"""Multi-LoRA ops for vLLM's CPU build that group tokens by adapter, installed as a vLLM plugin.

Why: vLLM's CPU build (0.32) applies LoRA with the PyTorch-native punica ops in
``vllm.lora.ops.torch_ops``. Each does ``lora_weights[lora_indices]``, a full copy of the
adapter matrix for every token (512 prefill tokens x rank 16 x hidden 576 is 19 MB in fp32,
per op, per layer), then an einsum token by token; with adapters, vLLM on CPU keeps only
about 0.3x of the base model's throughput (bench/results/serving.md). The ops here compute
the same thing with one matmul per distinct adapter in the batch (at most ``max_loras``),
except when there are fewer than two tokens per adapter (decode): then each token gets its
own matrix as in vLLM, but gathered with ``index_select``, multiplied row-vector-by-matrix,
and without expanding or sorting indices punica already gives one per token; that is ~1.5x
faster than vLLM's per-token einsum (bench/results/cpu_lora_ops.md).

They are drop-in replacements (same signatures, same result up to float summation order) with
one deliberate difference, a fix:

- vLLM marks a token that uses no adapter with index -1, and its CUDA kernels skip such
  tokens. vLLM's CPU ops instead index ``lora_weights[-1]``, the *last* slot
  (``max_loras - 1``): harmless while that slot is empty (zeros), but once an adapter
  occupies it, every base-model token batched with adapter tokens gets that adapter's delta.
  A base-model request must answer the same whatever else is in the batch, so here a
  negative index contributes nothing: a shrink writes zeros for that token, an expand adds
  nothing to it (with ``add_inputs=False`` it writes zeros, the token's LoRA output).
  Callers lose nothing by it: they zero the shrink buffer first and only add the expand.

Kept from vLLM's versions on purpose: weights and inputs are cast to the output tensor's
dtype before the product; 4-D weights ``[max_loras, 1, out, in]`` lose dim 1; a one-row input
or index list broadcasts as einsum does; the writes into the output (``scaling``,
``add_inputs``, ``bgmv_expand``'s ``limit``/``common_len`` padding rule, slices) are vLLM's
own lines.

Installation: ``register()`` is a ``vllm.general_plugins`` entry point (pyproject.toml,
``openft_cpu_lora``). vLLM 0.32 calls ``load_general_plugins()`` in every process it runs
model or engine code in: the front-end process (``EngineArgs``), the EngineCore process
(``EngineCore.__init__``) and each worker (``WorkerWrapperBase.init_worker``). It rebinds
the six names in ``vllm.lora.punica_wrapper.punica_cpu``, where ``PunicaWrapperCPU`` looks
them up, and points the CPU platform's ``get_punica_wrapper`` at ``GroupedPunicaWrapperCPU``,
only when vLLM's current platform is CPU. The ops alone still pay a fixed cost per call, 14
calls per decoder layer; the wrapper lays each step's tokens out by adapter slot once and does
one batched matmul per slice, which brings decode LoRA from about 2.2x to 0.5-0.8x of the
base linears' time per layer in bf16 (bench/results/cpu_lora_ops.md). The LM head's LoRA
(vLLM wraps the LM head whenever LoRA is on) skips the slots whose adapter left it alone.

Turning it off: ``VLLM_PLUGINS`` is vLLM's allow-list of plugin entry-point names, read in
each process (children inherit it). Unset, every installed general plugin loads. Any value
that does not name ``openft_cpu_lora`` leaves the stock ops in place: ``VLLM_PLUGINS=""``
loads no general plugin at all (vLLM's own LoRA resolvers included), while
``VLLM_PLUGINS=lora_filesystem_resolver`` keeps that one and drops ours.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

# Under vLLM's logger tree so the line goes through vLLM's logging setup and shows up, with
# the process's prefix, in the engine's log.
logger = logging.getLogger("vllm.plugins.openft_cpu_lora")

_PATCHED_NAMES = (
    "bgmv_shrink",
    "bgmv_expand",
    "bgmv_expand_slice",
    "sgmv_shrink",
    "sgmv_expand",
    "sgmv_expand_slice",
)
# Below this many tokens per distinct adapter, a per-token gather beats one matmul per adapter
# (bench/cpu_lora_ops.py: 16 decode tokens over 16 adapters).
_MIN_TOKENS_PER_ADAPTER = 2


def _stacked(weights: torch.Tensor) -> torch.Tensor:
    """``[max_loras, out, in]``: vLLM stacks some layers' weights as ``[max_loras, 1, out, in]``."""
    return weights[:, 0] if weights.dim() == 4 else weights


def _grouped_matmul(
    inputs: torch.Tensor,
    lora_weights: torch.Tensor,
    lora_indices: torch.Tensor,
    dtype: torch.dtype,
) -> torch.Tensor:
    """``out[t] = inputs[t] @ lora_weights[lora_indices[t]].T`` in ``dtype``, and zeros where
    ``lora_indices[t] < 0`` (no adapter): vLLM's ``einsum("bi, boi -> bo", inputs,
    lora_weights[lora_indices])`` without its reading of -1 as the last slot.

    One adapter in the batch: one matmul, nothing copied. Several: tokens sorted by index
    (stable), one matmul per contiguous block, results put back in token order. When the
    adapters average fewer than ``_MIN_TOKENS_PER_ADAPTER`` tokens each (a decode step whose
    sequences all use different adapters), every token needs its own matrix anyway and the
    per-block overhead loses to a per-token gather (``_per_token_matmul``).
    """
    lora_weights = _stacked(lora_weights)
    rows = torch.broadcast_shapes(inputs.shape[:1], lora_indices.shape)[0]
    inputs = inputs.to(dtype=dtype).expand(rows, -1)
    indices = lora_indices.expand(rows)
    distinct, counts = torch.unique(indices, return_counts=True)
    if distinct.numel() == 0 or int(distinct[-1]) < 0:
        return inputs.new_zeros(rows, lora_weights.shape[1])
    if distinct.numel() == 1:
        return inputs @ lora_weights[int(distinct[0])].to(dtype=dtype).T
    if rows < _MIN_TOKENS_PER_ADAPTER * distinct.numel():
        return _per_token_matmul(inputs, lora_weights, indices, dtype)
    order = torch.argsort(indices, stable=True)
    blocks = torch.index_select(inputs, 0, order).split(counts.tolist())
    sorted_out = torch.cat(
        [block.new_zeros(block.shape[0], lora_weights.shape[1]) if index < 0
         else block @ lora_weights[index].to(dtype=dtype).T
         for index, block in zip(distinct.tolist(), blocks, strict=True)]
    )
    return torch.empty_like(sorted_out).index_copy_(0, order, sorted_out)


def _per_token_matmul(
    inputs: torch.Tensor,
    lora_weights: torch.Tensor,
    indices: torch.Tensor,
    dtype: torch.dtype,
) -> torch.Tensor:
    """``_grouped_matmul`` for inputs and indices of equal length, one weight matrix per token.

    index_select copies rows several times faster than ``lora_weights[indices]`` does, but
    takes no negative indices: no-adapter rows read slot 0 and are zeroed after. A batch of
    row-vector-times-matrix products runs 2-3x faster than einsum's matrix-times-column one
    (bench/cpu_lora_ops.py, decode rows).
    """
    selected = torch.index_select(_stacked(lora_weights), 0, indices.clamp(min=0)).to(dtype=dtype)
    outputs = torch.matmul(inputs.to(dtype=dtype).unsqueeze(1), selected.transpose(1, 2))
    return outputs.squeeze(1).masked_fill_((indices < 0).unsqueeze(1), 0)


def _token_matmul(
    inputs: torch.Tensor,
    lora_weights: torch.Tensor,
    seq_lens: torch.Tensor,
    seq_indices: torch.Tensor,
    segments: int,
    tokens: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """``_grouped_matmul`` for the sgmv ops' per-sequence indices. punica merges consecutive
    tokens with the same index into one segment, so ``segments == tokens`` (a decode step
    whose neighbours all use different adapters) means one token per index: no expanding,
    and no sorting to find that every token needs its own matrix."""
    if segments == tokens and inputs.shape[0] == tokens:
        return _per_token_matmul(inputs, lora_weights, seq_indices, dtype)
    indices = torch.repeat_interleave(seq_indices, seq_lens)
    return _grouped_matmul(inputs, lora_weights, indices, dtype)


def _write_shrink(outputs: torch.Tensor, output_tensor: torch.Tensor, scaling: float) -> None:
    output_tensor[:, : outputs.shape[1]] = scaling * outputs[:]


def _write_expand(outputs: torch.Tensor, output_tensor: torch.Tensor, add_inputs: bool) -> None:
    limit = output_tensor.shape[0]
    if outputs.shape[0] == 1 and output_tensor.shape[0] != 1:
        limit = 1

    # LoRA adapter and model may add different amounts of padding to output
    common_len = min(outputs.shape[1], output_tensor.shape[1])

    if add_inputs:
        output_tensor[:, :common_len] += outputs[:limit, :common_len]
    else:
        output_tensor[:, :common_len] = outputs[:limit, :common_len]


def _write_expand_slice(
    outputs: torch.Tensor,
    output_tensor: torch.Tensor,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool,
) -> None:
    if add_inputs:
        output_tensor[:, slice_offset : slice_offset + slice_size] += outputs[:]
    else:
        output_tensor[:, slice_offset : slice_offset + slice_size] = outputs[:]


def bgmv_shrink(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    scaling: float = 1.0,
) -> None:
    """``output[:, :rank] = scaling * inputs @ A[idx].T`` per token (vLLM's ``bgmv_shrink``)."""
    outputs = _grouped_matmul(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    _write_shrink(outputs, output_tensor, scaling)


def bgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    add_inputs: bool = True,
) -> None:
    """``output (+)= inputs @ B[idx].T`` per token, over the columns both have
    (vLLM's ``bgmv_expand``)."""
    outputs = _grouped_matmul(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    _write_expand(outputs, output_tensor, add_inputs)


def bgmv_expand_slice(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = True,
) -> None:
    """``output[:, offset:offset+size] (+)= inputs @ B[idx].T`` per token (vLLM's
    ``bgmv_expand_slice``)."""
    outputs = _grouped_matmul(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    _write_expand_slice(outputs, output_tensor, slice_offset, slice_size, add_inputs)


# The sgmv variants take one index per sequence (per segment of consecutive tokens with the
# same index); vLLM's expand it to one per token and reuse the bgmv op, ours skip that where
# every segment is one token (see _token_matmul). b_seq_start_loc and max_seq_length are
# unused, as in vLLM's torch ops.


def sgmv_shrink(
    inputs: torch.Tensor,
    lora_a_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    b_seq_start_loc: torch.Tensor,
    seq_len_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    scaling: float,
) -> None:
    """vLLM's ``sgmv_shrink``: ``bgmv_shrink`` with per-sequence indices."""
    outputs = _token_matmul(inputs, lora_a_weights, seq_len_tensor, lora_indices_tensor,
                            batches, token_nums, output_tensor.dtype)
    _write_shrink(outputs, output_tensor, scaling)


def sgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    b_seq_start_loc: torch.Tensor,
    seq_len_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    add_inputs: bool = False,
) -> None:
    """vLLM's ``sgmv_expand``: ``bgmv_expand`` with per-sequence indices."""
    outputs = _token_matmul(inputs, lora_b_weights, seq_len_tensor, lora_indices_tensor,
                            batches, token_nums, output_tensor.dtype)
    _write_expand(outputs, output_tensor, add_inputs)


def sgmv_expand_slice(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    b_seq_start_loc: torch.Tensor,
    seq_len_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = False,
) -> None:
    """vLLM's ``sgmv_expand_slice``: ``bgmv_expand_slice`` with per-sequence indices."""
    outputs = _token_matmul(inputs, lora_b_weights, seq_len_tensor, lora_indices_tensor,
                            batches, token_nums, output_tensor.dtype)
    _write_expand_slice(outputs, output_tensor, slice_offset, slice_size, add_inputs)


# --- the wrapper: one bmm per slice over the step's adapter slots -------------------------

# Padded rows allowed per token before a step falls back to the per-op path above (adapters
# spread over far-apart slots, or very uneven token counts per adapter).
_MAX_PADDED_ROWS_PER_TOKEN = 2
_PADDED_ROWS_SLACK = 64


@dataclass(frozen=True)
class _SlotBatches:
    """A step's tokens laid out as ``[slots, per_slot]`` rows for bmm over the slots
    ``first .. first + slots - 1``: row ``r * per_slot + j`` holds the j-th token using slot
    ``first + r``. Rows no token fills are zeroed before the product; no-adapter tokens get
    no row, hence no delta."""

    tokens: int
    first: int
    slots: int
    per_slot: int
    row_token: torch.Tensor | None  # token of each row (0 for empty rows); None: row t = token t
    token_row: torch.Tensor | None  # row of each token (0 for no-adapter ones); None: same
    empty_rows: torch.Tensor | None  # [rows, 1] True where no token; None when there are none
    no_adapter: torch.Tensor | None  # [tokens, 1] True for index -1; None when there are none

    @property
    def any_adapter(self) -> bool:
        return self.slots > 0


def slot_batches(indices: torch.Tensor) -> _SlotBatches | None:
    """The layout of a step's per-token slot indices (-1: no adapter), or None when padding
    would cost more than ``_MAX_PADDED_ROWS_PER_TOKEN`` rows per token."""
    tokens = indices.shape[0]
    has_adapter = indices >= 0
    token_ids = has_adapter.nonzero().squeeze(1)
    adapted = token_ids.shape[0]
    if adapted == 0:
        return _SlotBatches(tokens, 0, 0, 0, None, None, None, None)
    slots_used = indices[token_ids]
    first = int(slots_used.min())
    counts = torch.bincount(slots_used - first)
    slots, per_slot = counts.shape[0], int(counts.max())
    rows = slots * per_slot
    if rows > _MAX_PADDED_ROWS_PER_TOKEN * tokens + _PADDED_ROWS_SLACK:
        return None
    order = torch.argsort(slots_used, stable=True)
    sorted_slots = slots_used[order] - first
    starts = torch.cumsum(counts, 0) - counts
    token_rows = sorted_slots * per_slot + torch.arange(adapted) - starts[sorted_slots]
    sorted_tokens = token_ids[order]
    row_token = torch.zeros(rows, dtype=torch.long).index_copy_(0, token_rows, sorted_tokens)
    token_row = torch.zeros(tokens, dtype=torch.long).index_copy_(0, sorted_tokens, token_rows)
    identity = rows == tokens == adapted and bool((row_token == torch.arange(rows)).all())
    empty_rows = None
    if rows > adapted:
        empty_rows = torch.ones(rows, 1, dtype=torch.bool).index_fill_(0, token_rows, False)
    return _SlotBatches(
        tokens, first, slots, per_slot,
        row_token=None if identity else row_token,
        token_row=None if identity else token_row,
        empty_rows=empty_rows,
        no_adapter=None if adapted == tokens else ~has_adapter.unsqueeze(1),
    )


def _slot_range(weights: torch.Tensor, batches: _SlotBatches) -> torch.Tensor:
    """``[slots, out, in]`` view of the step's slots in ``[max_loras, (1,) out, in]``."""
    return _stacked(weights)[batches.first : batches.first + batches.slots]


def _to_rows(x: torch.Tensor, batches: _SlotBatches, dtype: torch.dtype) -> torch.Tensor:
    """``x [tokens, width]`` as ``[slots, per_slot, width]`` in ``dtype``."""
    rows = x if batches.row_token is None else torch.index_select(x, 0, batches.row_token)
    rows = rows.to(dtype=dtype)
    if batches.empty_rows is not None:
        rows = rows.masked_fill(batches.empty_rows, 0)
    return rows.view(batches.slots, batches.per_slot, x.shape[1])


def _shrink_rows(rows: torch.Tensor, lora_a: torch.Tensor, batches: _SlotBatches,
                 scale: float) -> torch.Tensor:
    shrunk = torch.bmm(rows, _slot_range(lora_a, batches).transpose(1, 2))
    return shrunk if scale == 1.0 else shrunk.mul_(scale)


def _add_expanded(y: torch.Tensor, rows: torch.Tensor, lora_b: torch.Tensor,
                  batches: _SlotBatches, offset: int, size: int) -> None:
    """``y[:, offset:offset+size] += rows @ B[slot].T`` back in token order, computed in the
    weights' dtype and added in ``y``'s."""
    _add_rows(y, torch.bmm(rows, _slot_range(lora_b, batches).transpose(1, 2)), batches,
              offset, size)


def _add_rows(y: torch.Tensor, expanded: torch.Tensor, batches: _SlotBatches, offset: int,
              size: int) -> None:
    """Add ``expanded`` (``[slots, per_slot, size]`` rows) to ``y[:, offset:offset+size]`` in
    token order, in ``y``'s dtype. Rows are put in token order with index_select (each
    token reads its row; empty rows are never read), which runs about 4x faster than an
    index_add of the rows into a bf16 output."""
    expanded = expanded.reshape(-1, size)
    if batches.token_row is not None:
        expanded = torch.index_select(expanded, 0, batches.token_row)
        if batches.no_adapter is not None:  # their token_row is 0: another token's row
            expanded.masked_fill_(batches.no_adapter, 0)
    y[:, offset : offset + size] += expanded.to(dtype=y.dtype)


class GroupedPunicaWrapperCPU(PunicaWrapperCPU):
    """vLLM's ``PunicaWrapperCPU`` with its linear-layer LoRA done in a handful of torch ops.

    vLLM's wrapper calls one shrink and one expand op per slice (qkv: 3, gate_up: 2), each a
    dozen small torch ops; in a decode step the fixed cost of those ops, not the arithmetic,
    made LoRA cost more than the base layer. Here ``update_metadata`` lays the step's tokens
    out by adapter slot once (``slot_batches``), and each slice is one bmm for the shrink and
    one for the expand over the contiguous range of slots the step uses, reading the stacked
    weights in place (nothing cached, so an adapter loaded into a slot is used at once).

    Products are computed in the adapter weights' dtype (vLLM's ``lora_dtype``) and added to
    the layer's output in its own. Serving keeps the weights in fp32 on CPU
    (``ServingConfig.lora_dtype``): a decode step's products (a few rows per adapter) run
    faster in fp32 than in bf16 on CPUs, while a long prefill's run slower where the CPU has
    bf16 units (AMX), bench/results/cpu_lora_ops.md. One dtype for every step on purpose:
    computing large steps in bf16 made an adapter's greedy answer depend on what it was
    batched with (the serving tests caught it).

    Semantics are vLLM's wrapper's (scale, slices and offsets, ``add_inputs``, the fp32
    buffer ``add_shrink`` writes, ``no_lora`` in prefill), with the same fix as the ops above:
    a no-adapter token gets no delta. One difference in rounding: ``add_lora_linear`` keeps
    the rank-wide intermediate in the weights' dtype, where vLLM's fp32 buffer is rounded to
    the model dtype before the expand. Anything else (a caller's buffer, ``add_inputs=False``,
    input and output of different dtypes, a layout padding would make wasteful, embeddings,
    logits) takes vLLM's path, which uses the ops above.
    """

    _batches: _SlotBatches | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._live: dict[int, tuple[torch.Tensor, int, torch.Tensor]] = {}

    def update_metadata(self, mapping: Any, lora_index_to_id: list[int | None],
                        max_loras: int, vocab_size: int, **kwargs: Any) -> None:
        super().update_metadata(mapping, lora_index_to_id, max_loras, vocab_size, **kwargs)
        self._batches = slot_batches(self.token_lora_indices)

    def _step_batches(self, x: torch.Tensor, *weights: torch.Tensor) -> _SlotBatches | None:
        batches = self._batches
        if batches is None or x.shape[0] != batches.tokens:
            return None
        if any(w.dtype != weights[0].dtype for w in weights):
            return None
        return batches

    def add_shrink(self, y: tuple[torch.Tensor, ...] | torch.Tensor, x: torch.Tensor,
                   lora_a_stacked: tuple[torch.Tensor, ...], scale: float,
                   **kwargs: Any) -> None:
        x = x.view(-1, x.shape[-1])
        batches = self._step_batches(x, *lora_a_stacked)
        if batches is None:
            return super().add_shrink(y, x, lora_a_stacked, scale, **kwargs)
        if not batches.any_adapter:
            # A step of base-model tokens only. vLLM skips prefill; its decode ops run anyway
            # and write zeros for them here: write those zeros without the products.
            if not self.is_prefill:
                for out, lora_a in zip(y, lora_a_stacked, strict=False):
                    out.view(-1, out.shape[-1])[:, : lora_a.shape[-2]].zero_()
            return None
        rows = _to_rows(x, batches, lora_a_stacked[0].dtype)
        for out, lora_a in zip(y, lora_a_stacked, strict=False):
            shrunk = _shrink_rows(rows, lora_a, batches, scale).view(-1, lora_a.shape[-2])
            if batches.token_row is not None:
                shrunk = torch.index_select(shrunk, 0, batches.token_row)
            out = out.view(-1, out.shape[-1])[:, : shrunk.shape[1]]
            out.copy_(shrunk)
            if batches.no_adapter is not None:
                out.masked_fill_(batches.no_adapter, 0)
        return None

    def add_expand(self, y: torch.Tensor, x: tuple[torch.Tensor, ...] | torch.Tensor,
                   lora_b_stacked: tuple[torch.Tensor, ...], output_slices: tuple[int, ...],
                   offset_start: int = 0, add_inputs: bool = True, **kwargs: Any) -> None:
        y2 = y.view(-1, y.shape[-1])
        batches = self._step_batches(y2, *lora_b_stacked)
        if batches is None or not add_inputs:
            return super().add_expand(y, x, lora_b_stacked, output_slices, offset_start,
                                      add_inputs, **kwargs)
        if not batches.any_adapter:
            return None  # base-model tokens only: nothing to add
        offset = offset_start
        for shrunk, lora_b, size in zip(x, lora_b_stacked, output_slices, strict=False):
            rows = _to_rows(shrunk.view(-1, shrunk.shape[-1]), batches, lora_b.dtype)
            _add_expanded(y2, rows, lora_b, batches, offset, size)
            offset += size
        return None

    def add_lora_linear(self, y: torch.Tensor, x: torch.Tensor,
                        lora_a_stacked: tuple[torch.Tensor, ...],
                        lora_b_stacked: tuple[torch.Tensor, ...], scale: float,
                        output_slices: tuple[int, ...], *,
                        buffer: tuple[torch.Tensor, ...] | None = None,
                        **kwargs: Any) -> None:
        batches = self._step_batches(x, *lora_a_stacked, *lora_b_stacked)
        if batches is None or buffer is not None or kwargs or x.dtype != y.dtype:
            return super().add_lora_linear(y, x, lora_a_stacked, lora_b_stacked, scale,
                                           output_slices, buffer=buffer, **kwargs)
        assert len(lora_a_stacked) == len(lora_b_stacked) == len(output_slices)
        if not batches.any_adapter:
            return None
        y2 = y.view(-1, y.shape[-1])
        rows = _to_rows(x, batches, lora_a_stacked[0].dtype)
        offset = 0
        for lora_a, lora_b, size in zip(lora_a_stacked, lora_b_stacked, output_slices,
                                        strict=True):
            _add_expanded(y2, _shrink_rows(rows, lora_a, batches, scale), lora_b, batches,
                          offset, size)
            offset += size
        return None

    def add_lora_logits(self, y: torch.Tensor, x: torch.Tensor, lora_a_stacked: torch.Tensor,
                        lora_b_stacked: torch.Tensor, scale: float, *,
                        buffer: torch.Tensor | None = None, **kwargs: Any) -> None:
        """The LM head's LoRA, for the step's sampled rows (``sampler_indices``).

        vLLM wraps the LM head whenever LoRA is on, and its CPU path gathers every sampled
        row's ``[vocab, rank]`` B matrix (49152 x 16 for SmolLM2: 3 MB per row in fp32) and
        casts it, every step, even though adapters rarely train the LM head (PEFT's
        "all-linear" leaves it out) and their slots hold zeros. Here slots whose B is all
        zeros count as no adapter (``_live_slots``); the rest go through one bmm each way
        over the step's slots, reading the weights in place.
        """
        y2, x2 = y.view(-1, y.shape[-1]), x.view(-1, x.shape[-1])
        indices = self.sampler_indices
        batches = None
        if (buffer is None and not kwargs and lora_a_stacked.dtype == lora_b_stacked.dtype
                and indices.shape[0] == x2.shape[0]):
            live = self._live_slots(lora_b_stacked)
            batches = slot_batches(torch.where(live[indices.clamp(min=0)] & (indices >= 0),
                                               indices, -1))
        if batches is None:
            return super().add_lora_logits(y, x, lora_a_stacked, lora_b_stacked, scale,
                                           buffer=buffer, **kwargs)
        if batches.any_adapter:
            width = min(lora_b_stacked.shape[-2], y2.shape[1])  # bgmv_expand's common columns
            rows = _to_rows(x2, batches, lora_a_stacked.dtype)
            _add_expanded(y2, _shrink_rows(rows, lora_a_stacked, batches, scale),
                          lora_b_stacked[..., :width, :], batches, 0, width)
        return None

    def _live_slots(self, lora_b_stacked: torch.Tensor) -> torch.Tensor:
        """``[max_loras]``: True where the slot's B is not all zeros.

        Kept until the weights change: vLLM loads and unloads an adapter by writing into the
        stacked weights in place (``set_lora``, ``reset_lora``), which bumps their version
        counter, so a new version means look again.
        """
        kept = self._live.get(id(lora_b_stacked))
        if kept is None or kept[1] != lora_b_stacked._version:
            live = _stacked(lora_b_stacked).flatten(1).ne(0).any(dim=1)
            # The entry holds the tensor, so its id is not reused while the entry lives.
            kept = self._live[id(lora_b_stacked)] = (lora_b_stacked, lora_b_stacked._version,
                                                     live)
        return kept[2]


_WRAPPER = f"{GroupedPunicaWrapperCPU.__module__}.{GroupedPunicaWrapperCPU.__qualname__}"


def register() -> None:
    """vLLM general-plugin entry point: use these ops in ``PunicaWrapperCPU``, on CPU only.

    vLLM may call it more than once per process; the second call changes nothing.
    """
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.lora.punica_wrapper import punica_cpu

    ours = globals()
    platform = type(current_platform)
    if (all(getattr(punica_cpu, name) is ours[name] for name in _PATCHED_NAMES)
            and platform.get_punica_wrapper() == _WRAPPER):
        return
    for name in _PATCHED_NAMES:
        setattr(punica_cpu, name, ours[name])
    # vLLM builds the wrapper class this names (punica_selector.get_punica_wrapper).
    platform.get_punica_wrapper = classmethod(lambda cls: _WRAPPER)  # type: ignore[method-assign]
    logger.info(
        "openft_cpu_lora: grouped multi-LoRA ops and GroupedPunicaWrapperCPU installed (pid %d); "
        "VLLM_PLUGINS without 'openft_cpu_lora' turns this off", os.getpid(),
    )
