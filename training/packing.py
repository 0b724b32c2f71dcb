"""One forward batch (a micro-batch): packed or padded rows, no cross-talk, one loss.

A micro-batch's examples become rows of at most ``max_seq_length`` tokens: several examples
per row with packing on (first-fit decreasing), one per row with packing off. Either way the
loss is the same number with the same gradient, the mean over the micro-batch's examples of
each example's mean token loss. Every micro-batch of a step holds as many examples
(:func:`training.data.micro_batch_size`) and DeepSpeed divides each micro-batch's loss by
their count, so the step's loss is the mean over all its examples however they are split:
what the one-example-per-forward loop computed first.

How attention stays inside each example. No ``attention_mask`` is passed, only
``position_ids`` that restart at 0 at every example (and at the row's trailing padding):

- sdpa and eager. With ``attention_mask=None`` and no cache, transformers'
  ``masking_utils.create_causal_mask`` runs ``find_packed_sequence_indices(position_ids)``:
  a new sequence starts wherever the position does not go up by one, and the causal mask is
  ANDed with "same sequence", which is block-diagonal causal. Two things turn that
  detection off and silently give a plain causal mask across the whole row: any 2D
  ``attention_mask``, even all ones, and a cache, which Llama builds even in training
  unless ``use_cache=False`` (its config defaults to True). :func:`model_inputs` passes
  neither; ``tests/training/test_packing.py`` shows the logits change with either.
  Padding sits right of every real token of its row and is its own sequence, so under a
  causal mask no real token ever sees it; padding rows need no mask either. An explicit 4D
  mask would also work for sdpa and eager but not for flash-attention, and costs rows x L x L.
- flash_attention_2. Its position-ids path only splits sequences when the batch has a single
  row (``_is_packed_sequence`` checks ``batch_size == 1``); with several rows it would run
  plain causal attention over each row. So :func:`model_inputs` also passes the varlen
  kwargs ``cu_seq_lens_q/k`` and ``max_length_q/k`` (the ``FlashAttentionKwargs`` that
  ``DataCollatorWithFlattening(return_flash_attn_kwargs=True)`` makes): boundaries of every
  example and padding run in the rows flattened end to end, which is how
  ``_flash_attention_forward`` reshapes them before ``flash_attn_varlen_func``. sdpa and
  eager ignore these kwargs. The tests check the kwargs on CPU with a reference varlen
  attention, and against the real kernel in a ``gpu``-marked test.

Labels. Each example's first label is set to ``IGNORE_INDEX``: in a packed row the position
before it is the previous example's last token, which must not learn to predict it (alone,
the first label is never a target anyway). ``loss_weights`` is aligned with ``labels``:
``loss_weights[r, t]`` weighs the loss of predicting ``labels[r, t]`` from the logits at
``t - 1``; an example with ``n`` trained tokens gives each ``1 / (n * N)`` for ``N`` examples
in the batch. An example with no trained token (all cut by truncation) adds 0 to the loss and
still counts in ``N``. :func:`training.token_loss.weighted_token_loss` computes the loss.

Two examples, ``max_seq_length=8``, packing on then off:

>>> a = TokenizedExample([5, 6, 7], [-100, 6, 7])
>>> b = TokenizedExample([8, 9], [8, 9])
>>> batch = build_batch([a, b], max_seq_length=8, pad_id=0, packing=True)
>>> {k: v.tolist() for k, v in batch.items()}  # doctest: +NORMALIZE_WHITESPACE
{'input_ids': [[5, 6, 7, 8, 9]], 'position_ids': [[0, 1, 2, 0, 1]],
 'labels': [[-100, 6, 7, -100, 9]], 'loss_weights': [[0.0, 0.25, 0.25, 0.0, 0.5]],
 'cu_seq_lens': [0, 3, 5]}
>>> batch = build_batch([a, b], max_seq_length=8, pad_id=0, packing=False)
>>> {k: v.tolist() for k, v in batch.items()}  # doctest: +NORMALIZE_WHITESPACE
{'input_ids': [[5, 6, 7], [8, 9, 0]], 'position_ids': [[0, 1, 2], [0, 1, 0]],
 'labels': [[-100, 6, 7], [-100, 9, -100]], 'loss_weights': [[0.0, 0.25, 0.25], [0.0, 0.5, 0.0]],
 'cu_seq_lens': [0, 3, 5, 6]}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from training.chat_template import IGNORE_INDEX, TokenizedExample


def pack(examples: Sequence[TokenizedExample], max_seq_length: int) -> list[list[int]]:
    """Indices of ``examples`` per row, first-fit decreasing; rows hold ``max_seq_length``.

    Longest first (ties by index), each into the first row it fits, else a new row.

    >>> lengths = [3, 5, 2, 4, 1]
    >>> pack([TokenizedExample([0] * n, [0] * n) for n in lengths], max_seq_length=6)
    [[1, 4], [3, 2], [0]]
    """
    rows: list[list[int]] = []
    room: list[int] = []
    order = sorted(range(len(examples)), key=lambda i: (-examples[i].num_tokens, i))
    for i in order:
        size = examples[i].num_tokens
        if size > max_seq_length:
            raise ValueError(
                f"example {i} has {size} tokens, more than max_seq_length={max_seq_length}"
            )
        row = next((r for r, free in enumerate(room) if free >= size), None)
        if row is None:
            rows.append([])
            room.append(max_seq_length)
            row = len(rows) - 1
        rows[row].append(i)
        room[row] -= size
    return rows


def build_batch(
    examples: Sequence[TokenizedExample],
    max_seq_length: int,
    pad_id: int,
    packing: bool,
) -> dict[str, torch.Tensor]:
    """One forward batch of ``examples``; see the module docstring for every tensor.

    Returns ``input_ids``, ``position_ids``, ``labels``, ``loss_weights`` (rows x width) and
    ``cu_seq_lens`` (int32 boundaries of every example and padding run, rows flattened).
    """
    if not examples:
        raise ValueError("a batch needs at least one example")
    rows = pack(examples, max_seq_length) if packing else [[i] for i in range(len(examples))]
    width = max(sum(examples[i].num_tokens for i in row) for row in rows)
    n_examples = len(examples)

    input_ids, position_ids, labels, weights = [], [], [], []
    cu_seq_lens = [0]
    for row in rows:
        ids: list[int] = []
        pos: list[int] = []
        lab: list[int] = []
        wts: list[float] = []
        for i in row:
            example = examples[i]
            if not example.num_tokens:
                continue
            targets = [IGNORE_INDEX, *example.labels[1:]]
            trained = sum(1 for label in targets if label != IGNORE_INDEX)
            weight = 1.0 / (trained * n_examples) if trained else 0.0
            ids += example.input_ids
            pos += range(example.num_tokens)
            lab += targets
            wts += [weight if label != IGNORE_INDEX else 0.0 for label in targets]
            cu_seq_lens.append(cu_seq_lens[-1] + example.num_tokens)
        padding = width - len(ids)
        if padding:
            ids += [pad_id] * padding
            pos += range(padding)  # its own sequence, right of every real token
            lab += [IGNORE_INDEX] * padding
            wts += [0.0] * padding
            cu_seq_lens.append(cu_seq_lens[-1] + padding)
        input_ids.append(ids)
        position_ids.append(pos)
        labels.append(lab)
        weights.append(wts)
    return {
        "input_ids": torch.tensor(input_ids, dtype=torch.long),
        "position_ids": torch.tensor(position_ids, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "loss_weights": torch.tensor(weights, dtype=torch.float32),
        "cu_seq_lens": torch.tensor(cu_seq_lens, dtype=torch.int32),
    }


def collate(examples: Sequence[TokenizedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example, with an attention mask: padding carries no loss.

    For forwards that take an ``attention_mask`` (DPO's padded rows), not :func:`build_batch`'s.

    >>> batch = collate([TokenizedExample([5, 6, 7], [-100, 6, 7]),
    ...                  TokenizedExample([8], [8])], pad_id=0)
    >>> batch["input_ids"].tolist(), batch["attention_mask"].tolist(), batch["labels"].tolist()
    ([[5, 6, 7], [8, 0, 0]], [[1, 1, 1], [1, 0, 0]], [[-100, 6, 7], [8, -100, -100]])
    """
    width = max(example.num_tokens for example in examples)

    def pad(values: list[int], fill: int) -> list[int]:
        return values + [fill] * (width - len(values))

    return {
        "input_ids": torch.tensor([pad(e.input_ids, pad_id) for e in examples]),
        "attention_mask": torch.tensor([pad([1] * e.num_tokens, 0) for e in examples]),
        "labels": torch.tensor([pad(e.labels, IGNORE_INDEX) for e in examples]),
    }


def model_device(model: Any) -> torch.device:
    """Where a batch for ``model`` must go: a DeepSpeed engine says, a plain module's
    parameters tell."""
    device = getattr(model, "device", None)
    return device if device is not None else next(model.parameters()).device


def model_inputs(batch: dict[str, torch.Tensor], device: torch.device | str) -> dict[str, Any]:
    """The model's forward kwargs for ``batch``: ``model(**model_inputs(batch, device))``.

    Deliberately no ``attention_mask`` and ``use_cache=False``: either a 2D mask or a cache
    (Llama's config says ``use_cache=True``, and the model then builds a ``DynamicCache``
    even in training) switches off transformers' packed-sequence detection (module
    docstring). The varlen kwargs serve flash_attention_2 only.
    """
    cu_seq_lens = batch["cu_seq_lens"].to(device)
    max_length = int(batch["cu_seq_lens"].diff().max())
    return {
        "input_ids": batch["input_ids"].to(device),
        "position_ids": batch["position_ids"].to(device),
        "use_cache": False,
        "cu_seq_lens_q": cu_seq_lens,
        "cu_seq_lens_k": cu_seq_lens,
        "max_length_q": max_length,
        "max_length_k": max_length,
    }

