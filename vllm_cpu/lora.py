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
only when vLLM's current platform is CPU (those private names are reached through
``vllm_cpu.vllm_private``). The ops alone still pay a fixed cost per call, 14
calls per decoder layer; the wrapper makes one call per layer into numba kernels
(``vllm_cpu.lora_kernels``) that do each token's shrink and expand from its adapter's
weights in place (bench/results/cpu_lora_ops.md). The LM head's LoRA (vLLM wraps the LM head
whenever LoRA is on) skips the slots whose adapter left it alone.

Turning it off: ``VLLM_PLUGINS`` is vLLM's allow-list of plugin entry-point names, read in
each process (children inherit it). Unset, every installed general plugin loads. Any value
that does not name ``openft_cpu_lora`` leaves the stock ops in place: ``VLLM_PLUGINS=""``
loads no general plugin at all (vLLM's own LoRA resolvers included), while
``VLLM_PLUGINS=lora_filesystem_resolver`` keeps that one and drops ours.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import torch

from vllm_cpu import torch_private, vllm_private
from vllm_cpu.vllm_private import PUNICA_CPU_OPS, PunicaWrapperCPU

# Under vLLM's logger tree so the line goes through vLLM's logging setup and shows up, with
# the process's prefix, in the engine's log.
logger = logging.getLogger("vllm.plugins.openft_cpu_lora")

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


# --- the wrapper: the linear layers' and LM head's LoRA in one kernel call each -------------


@functools.cache
def _kernels() -> ModuleType:
    """``vllm_cpu.lora_kernels``, imported by the first wrapper, not with this module.

    It imports numba, and llvmlite's objects break the scan vLLM makes of every loaded
    module's namespace when a worker starts (``register_triton_kernel_overrides``, after
    general plugins load): the worker died at start when this module imported it.
    """
    # numba only once a wrapper is built, after vLLM's worker start-up scan: see above.
    from vllm_cpu import lora_kernels

    return lora_kernels


@dataclass(frozen=True)
class _LayerArrays:
    """A layer's stacked weights as the kernels read them, and what they were made from."""

    lora_a: Any  # vLLM's objects, held so their ids are not reused while this lives
    lora_b: Any
    versions: tuple[int, ...]  # of the B weights when the transposed copies were made
    a: tuple[Any, ...] | None  # None: the kernels do not take these weights
    bt: tuple[Any, ...] | None


class GroupedPunicaWrapperCPU(PunicaWrapperCPU):
    """vLLM's ``PunicaWrapperCPU`` with its linear layers' and LM head's LoRA done by
    ``vllm_cpu.lora_kernels``: one call per layer, each token's shrink and expand from its
    own adapter's weights, added into the layer's output in place.

    vLLM's wrapper calls one shrink and one expand op per slice (qkv: 3, gate_up: 2), each a
    dozen small torch ops; in a decode step the fixed cost of those ops, not the arithmetic,
    made LoRA cost more than the base layer, and batched matmuls over the step's slots (this
    wrapper's previous form) still read the adapters at half the memory bandwidth. The
    kernels accumulate in fp32 whatever the weights' dtype (vLLM's ``lora_dtype``: fp32 or
    bf16) and round the sum into the layer's output once, the same way in every step.
    ``update_metadata`` groups the step's tokens by adapter once for every layer.

    The kernels read the A weights in place and each B weight from a transposed copy, made
    the first time and again whenever vLLM has written into the layer's B weights since
    (``set_lora`` and ``reset_lora`` write in place, which bumps the tensors' version
    counters), so an adapter loaded into a slot is used at the next step. The copies cost the
    B weights' memory again (about half a slot's for rank 16 on every linear layer of a
    Llama).

    Semantics are vLLM's wrapper's (scale, slices and offsets, ``add_inputs``, the fp32
    buffer ``add_shrink`` writes, ``no_lora`` in prefill), with the same fix as the ops above:
    a no-adapter token gets no delta. The rank-wide intermediate stays in fp32 where vLLM
    rounds it to the weights' dtype. Anything else (a caller's buffer, ``add_inputs=False``,
    dtypes other than fp32 and bf16, input and output of different dtypes, embeddings) takes
    vLLM's path, which uses the ops above.
    """

    _any_adapter = False
    _tokens = -1
    _groups: tuple[Any, Any] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._live: dict[int, tuple[torch.Tensor, int, torch.Tensor]] = {}
        self._layers: dict[tuple[int, int, int | None], _LayerArrays] = {}
        lora_config = kwargs.get("lora_config")  # vLLM's LoRAModelManager passes it
        if lora_config is not None and lora_config.lora_dtype in _kernels().KERNEL_DTYPES:
            # Compile now, while the engine starts, not in the first adapter request.
            started = time.monotonic()
            _kernels().warm_up(lora_config.lora_dtype, lora_config.max_lora_rank)
            logger.info("openft_cpu_lora: kernels ready for %s adapter weights in %.1f s",
                        lora_config.lora_dtype, time.monotonic() - started)

    def update_metadata(self, mapping: Any, lora_index_to_id: list[int | None],
                        max_loras: int, vocab_size: int, **kwargs: Any) -> None:
        super().update_metadata(mapping, lora_index_to_id, max_loras, vocab_size, **kwargs)
        indices = self.token_lora_indices
        self._tokens = indices.shape[0]
        self._any_adapter = bool((indices >= 0).any())
        self._groups = _kernels().groups(indices.numpy())

    def _takes(self, x: torch.Tensor, y: torch.Tensor) -> bool:
        """Whether the kernels can take a call on this step's tokens with these activations."""
        return (self._groups is not None and x.shape[0] == self._tokens
                and x.dtype == y.dtype and x.dtype in _kernels().KERNEL_DTYPES)

    def _arrays(self, lora_a: Any, lora_b: Any, widths: tuple[int, ...] | None,
                width: int | None = None) -> _LayerArrays:
        """The kernels' arrays for a layer's weights (``lora_a``, ``lora_b``: vLLM's tuples
        of stacked tensors, or one tensor each for the LM head), kept per layer until vLLM
        writes into its B weights. ``widths``: the slices' widths the B weights must have;
        ``width``: read only the first ``width`` rows of B."""
        key = (id(lora_a), id(lora_b), width)
        a_list = lora_a if isinstance(lora_a, tuple) else (lora_a,)
        b_list = lora_b if isinstance(lora_b, tuple) else (lora_b,)
        versions = tuple(torch_private.version(b) for b in b_list)
        kept = self._layers.get(key)
        if kept is None or kept.versions != versions:
            kept = self._layers[key] = _LayerArrays(lora_a, lora_b, versions,
                                                   *self._kernel_weights(a_list, b_list,
                                                                         widths, width))
        return kept

    @staticmethod
    def _kernel_weights(lora_a: tuple[torch.Tensor, ...], lora_b: tuple[torch.Tensor, ...],
                        widths: tuple[int, ...] | None,
                        width: int | None) -> tuple[tuple[Any, ...] | None, ...]:
        kernels = _kernels()
        weights = (*lora_a, *lora_b)
        if (weights[0].dtype not in kernels.KERNEL_DTYPES
                or any(w.dtype != weights[0].dtype for w in weights)
                or (widths is not None and tuple(_stacked(b).shape[1] for b in lora_b) != widths)):
            return None, None
        a = tuple(kernels.as_kernel_array(_stacked(w)) for w in lora_a)
        bt = tuple(kernels.as_kernel_array(_stacked(w)[:, :width].transpose(1, 2).contiguous())
                   for w in lora_b)
        return a, bt

    def add_shrink(self, y: tuple[torch.Tensor, ...] | torch.Tensor, x: torch.Tensor,
                   lora_a_stacked: tuple[torch.Tensor, ...], scale: float,
                   **kwargs: Any) -> None:
        x = x.view(-1, x.shape[-1])
        arrays = self._arrays(lora_a_stacked, (), None)
        if (not self._takes(x, x) or arrays.a is None
                or any(out.dtype != torch.float32 for out in y)):
            return super().add_shrink(y, x, lora_a_stacked, scale, **kwargs)
        if not self._any_adapter:
            # A step of base-model tokens only. vLLM skips prefill; its decode ops run anyway
            # and write zeros for them here: write those zeros without the products.
            if not self.is_prefill:
                for out, lora_a in zip(y, lora_a_stacked, strict=False):
                    out.view(-1, out.shape[-1])[:, : lora_a.shape[-2]].zero_()
            return None
        xs = _kernels().as_kernel_array(x)
        for out, a in zip(y, arrays.a, strict=False):
            _kernels().shrink(xs, *self._groups, (a,), np.float32(scale),
                              out.view(1, x.shape[0], -1).numpy())
        return None

    def add_expand(self, y: torch.Tensor, x: tuple[torch.Tensor, ...] | torch.Tensor,
                   lora_b_stacked: tuple[torch.Tensor, ...], output_slices: tuple[int, ...],
                   offset_start: int = 0, add_inputs: bool = True, **kwargs: Any) -> None:
        y2 = y.view(-1, y.shape[-1])
        arrays = self._arrays((), lora_b_stacked, tuple(output_slices))
        if not self._takes(y2, y2) or arrays.bt is None or not add_inputs:
            return super().add_expand(y, x, lora_b_stacked, output_slices, offset_start,
                                      add_inputs, **kwargs)
        if not self._any_adapter:
            return None  # base-model tokens only: nothing to add
        shrunk = torch.stack([s.view(y2.shape[0], -1) for s in x]).float()
        _kernels().expand(shrunk.numpy(), *self._groups, arrays.bt,
                          _kernels().as_kernel_array(y2), offset_start)
        return None

    def add_lora_linear(self, y: torch.Tensor, x: torch.Tensor,
                        lora_a_stacked: tuple[torch.Tensor, ...],
                        lora_b_stacked: tuple[torch.Tensor, ...], scale: float,
                        output_slices: tuple[int, ...], *,
                        buffer: tuple[torch.Tensor, ...] | None = None,
                        **kwargs: Any) -> None:
        y2 = y.view(-1, y.shape[-1])
        if buffer is None and not kwargs and self._takes(x, y2):
            arrays = self._arrays(lora_a_stacked, lora_b_stacked, tuple(output_slices))
            if arrays.a is not None:
                if self._any_adapter:
                    kernels = _kernels()
                    kernels.lora_linear(kernels.as_kernel_array(x), *self._groups, arrays.a,
                                        arrays.bt, np.float32(scale),
                                        kernels.as_kernel_array(y2), 0)
                return None
        return super().add_lora_linear(y, x, lora_a_stacked, lora_b_stacked, scale,
                                       output_slices, buffer=buffer, **kwargs)

    def add_lora_logits(self, y: torch.Tensor, x: torch.Tensor, lora_a_stacked: torch.Tensor,
                        lora_b_stacked: torch.Tensor, scale: float, *,
                        buffer: torch.Tensor | None = None, **kwargs: Any) -> None:
        """The LM head's LoRA, for the step's sampled rows (``sampler_indices``).

        vLLM wraps the LM head whenever LoRA is on, and its CPU path gathers every sampled
        row's ``[vocab, rank]`` B matrix (49152 x 16 for SmolLM2: 3 MB per row in fp32) and
        casts it, every step, even though adapters rarely train the LM head (PEFT's
        "all-linear" leaves it out) and their slots hold zeros. Here slots whose B is all
        zeros count as no adapter (``_live_slots``); the rest go through the kernel over the
        columns both have (``bgmv_expand``'s rule).
        """
        y2, x2 = y.view(-1, y.shape[-1]), x.view(-1, x.shape[-1])
        indices = self.sampler_indices
        kernels = _kernels()
        if (buffer is not None or kwargs or indices.shape[0] != x2.shape[0]
                or x2.dtype != y2.dtype or x2.dtype not in kernels.KERNEL_DTYPES
                or lora_a_stacked.dtype != lora_b_stacked.dtype
                or lora_a_stacked.dtype not in kernels.KERNEL_DTYPES):
            return super().add_lora_logits(y, x, lora_a_stacked, lora_b_stacked, scale,
                                           buffer=buffer, **kwargs)
        live = self._live_slots(lora_b_stacked)
        indices = torch.where(live[indices.clamp(min=0)] & (indices >= 0), indices, -1)
        if bool((indices >= 0).any()):  # the B copy is made only for a trained LM head
            width = min(lora_b_stacked.shape[-2], y2.shape[1])
            arrays = self._arrays(lora_a_stacked, lora_b_stacked, None, width)
            kernels.lora_linear(kernels.as_kernel_array(x2), *kernels.groups(indices.numpy()),
                                arrays.a, arrays.bt, np.float32(scale),
                                kernels.as_kernel_array(y2), 0)
        return None

    def _live_slots(self, lora_b_stacked: torch.Tensor) -> torch.Tensor:
        """``[max_loras]``: True where the slot's B is not all zeros.

        Kept until the weights change: vLLM loads and unloads an adapter by writing into the
        stacked weights in place (``set_lora``, ``reset_lora``), which bumps their version
        counter, so a new version means look again.
        """
        kept = self._live.get(id(lora_b_stacked))
        version = torch_private.version(lora_b_stacked)
        if kept is None or kept[1] != version:
            live = _stacked(lora_b_stacked).flatten(1).ne(0).any(dim=1)
            # The entry holds the tensor, so its id is not reused while the entry lives.
            kept = self._live[id(lora_b_stacked)] = (lora_b_stacked, version, live)
        return kept[2]


_WRAPPER = f"{GroupedPunicaWrapperCPU.__module__}.{GroupedPunicaWrapperCPU.__qualname__}"


def register() -> None:
    """vLLM general-plugin entry point: use these ops in ``PunicaWrapperCPU``, on CPU only.

    vLLM may call it more than once per process; the second call changes nothing.
    """
    if not vllm_private.on_cpu():
        return
    ours = {name: globals()[name] for name in PUNICA_CPU_OPS}
    current = vllm_private.punica_cpu_ops()
    if (all(current[name] is ours[name] for name in PUNICA_CPU_OPS)
            and vllm_private.punica_wrapper_name() == _WRAPPER):
        return
    vllm_private.bind_punica_cpu_ops(ours)
    # vLLM builds the wrapper class this names (punica_selector.get_punica_wrapper).
    vllm_private.use_punica_wrapper(_WRAPPER)
    logger.info(
        "openft_cpu_lora: grouped multi-LoRA ops and GroupedPunicaWrapperCPU installed (pid %d); "
        "VLLM_PLUGINS without 'openft_cpu_lora' turns this off", os.getpid(),
    )
