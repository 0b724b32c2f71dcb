"""Token losses without full logits: the decoder body once, the LM head a chunk at a time.

A causal LM's logits are ``tokens x vocabulary``: for 8k tokens and a 128k vocabulary that is
4 GiB in fp32, more than the LoRA model itself, and most positions carry no loss (prompts,
padding). So the model runs with ``logits_to_keep`` an empty index (its head sees no
position), a forward hook on the decoder body keeps the final hidden states, and only the
positions whose next token is trained go through the head, :data:`CHUNK_LOGITS` logits at a
time, each chunk under ``torch.utils.checkpoint``: backward recomputes one chunk's logits at
a time instead of keeping them all. The logits are upcast to fp32 per chunk only.

The call still goes through ``model`` (a DeepSpeed engine, a PEFT model or a plain
transformers model): the engine's forward bookkeeping and ZeRO-3's parameter gathering run
as usual. The head is called as a module, so ZeRO-3 gathers its weight on each call
(recomputation included); a tied head is the embedding's own parameter, whose gradient
adds up over chunks like any other.

Position ``t`` predicts ``labels[:, t]`` from the hidden state at ``t - 1``, as in
``transformers``' own shifted loss.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from training.chat_template import IGNORE_INDEX

CHUNK_LOGITS = 2**25
"""Logits per head chunk (128 MiB in fp32): about 680 tokens of a 49k vocabulary, 260 of a
128k one."""


def causal_lm(model: Any) -> Any:
    """The transformers ``*ForCausalLM`` inside a DeepSpeed engine and/or a PEFT wrapper."""
    inner = getattr(model, "module", model)
    return inner.get_base_model() if hasattr(inner, "get_base_model") else inner


def final_hidden_states(model: Any, inputs: Mapping[str, Any]) -> torch.Tensor:
    """``model``'s last hidden states (``rows x length x hidden``) for ``model(**inputs)``,
    without computing any logit."""
    captured: list[torch.Tensor] = []

    def keep(_module: Any, _args: Any, output: Any) -> None:
        captured.append(output.last_hidden_state if hasattr(output, "last_hidden_state")
                        else output[0])

    hook = causal_lm(model).get_decoder().register_forward_hook(keep)
    try:
        no_position = torch.zeros(0, dtype=torch.long, device=inputs["input_ids"].device)
        model(**inputs, logits_to_keep=no_position)
    finally:
        hook.remove()
    if len(captured) != 1:
        raise RuntimeError(f"the decoder ran {len(captured)} times in one forward")
    return captured[0]


def head(model: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """Hidden states to logits as the model's own forward makes them (Gemma 2's final soft
    cap included)."""
    lm = causal_lm(model)
    output_embeddings = lm.get_output_embeddings()
    cap = getattr(lm.config, "final_logit_softcapping", None)
    if cap is None:
        return output_embeddings  # type: ignore[no-any-return]

    def capped(hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(output_embeddings(hidden) / cap) * cap

    return capped


def trained_positions(
    hidden: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(hidden, targets, mask)``: the hidden state before every trained label, the label,
    and where they sit in ``labels[:, 1:]``.

    >>> h = torch.arange(6.0).view(1, 3, 2)
    >>> states, targets, mask = trained_positions(h, torch.tensor([[-100, 7, -100]]))
    >>> states.tolist(), targets.tolist(), mask.tolist()
    ([[0.0, 1.0]], [7], [[True, False]])
    """
    shift_labels = labels[:, 1:].to(hidden.device)
    mask = shift_labels != IGNORE_INDEX
    return hidden[:, :-1][mask], shift_labels[mask], mask


def chunks(total: int, vocab_size: int) -> list[tuple[int, int]]:
    """``(start, end)`` of every head chunk over ``total`` positions.

    >>> chunks(5, vocab_size=2**24)
    [(0, 2), (2, 4), (4, 5)]
    >>> chunks(0, vocab_size=10)
    []
    """
    size = max(1, CHUNK_LOGITS // vocab_size)
    return [(start, min(total, start + size)) for start in range(0, total, size)]


def _run(function: Callable[..., Any], *args: torch.Tensor) -> Any:
    """``function(*args)``, recomputed in backward when a graph is being built.

    Without the metadata check: under ZeRO-3 the head's weight is a parameter whose data
    DeepSpeed gathers for each call and frees after it, so the check (run after the
    recomputation, once the weight is freed again) would see it empty; the weight is
    gathered again for the head's backward by ZeRO-3's own hooks.
    """
    if torch.is_grad_enabled():
        return checkpoint(function, *args, use_reentrant=False, determinism_check="none")
    return function(*args)


def weighted_token_loss(
    model: Any, hidden: torch.Tensor, batch: Mapping[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, loss_sum, correct, count)`` of a :func:`training.packing.build_batch` batch.

    ``loss`` is the sum of token losses times ``loss_weights`` (the mean over examples of
    their mean token loss); the other three, over trained tokens, are metric sums:
    ``loss_sum / count`` is the token-weighted loss, ``correct / count`` the accuracy. The
    loss keeps a graph even when no token is trained, so backward stays collective.
    """
    states, targets, mask = trained_positions(hidden, batch["labels"])
    weights = batch["loss_weights"][:, 1:].to(hidden.device)[mask]
    to_logits = head(model)

    def chunk_loss(h: torch.Tensor, t: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits = to_logits(h).float()
        per_token = torch.nn.functional.cross_entropy(logits, t, reduction="none")
        correct = (logits.detach().argmax(-1) == t).sum()
        return (per_token * w).sum(), per_token.detach().sum(), correct

    # Zero times the hidden states: a graph through the body even with nothing trained.
    loss = hidden.sum().float() * 0.0
    loss_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
    correct = torch.zeros((), dtype=torch.long, device=hidden.device)
    for a, b in chunks(len(targets), causal_lm(model).config.vocab_size):
        part, part_sum, part_correct = _run(chunk_loss, states[a:b], targets[a:b], weights[a:b])
        loss, loss_sum, correct = loss + part, loss_sum + part_sum, correct + part_correct
    return loss, loss_sum, correct, mask.sum()


def sequence_logps(model: Any, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed log-probability of each row's labelled tokens (``[rows]``), chunk by chunk."""
    states, targets, mask = trained_positions(hidden, labels)
    rows = mask.nonzero()[:, 0]
    to_logits = head(model)

    def chunk_logps(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits = to_logits(h).float()
        return logits.gather(-1, t.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)

    total = hidden.new_zeros(hidden.size(0), dtype=torch.float32) + hidden.sum().float() * 0.0
    for a, b in chunks(len(targets), causal_lm(model).config.vocab_size):
        total = total.index_add(0, rows[a:b], _run(chunk_logps, states[a:b], targets[a:b]))
    return total
