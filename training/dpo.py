"""Direct Preference Optimization (Rafailov et al., 2023) for LoRA runs.

A preference line holds one prompt and two answers; each answer becomes one row (prompt +
answer) whose only trained tokens are the answer's. The policy is the model with its LoRA
adapter; the reference is the same model with the adapter disabled, i.e. the frozen base, so
no second copy of the weights is kept. A training step is :func:`preference_step`: the
reference log-probs under ``torch.no_grad``, then the policy log-probs with a graph, then
the sigmoid loss of :func:`dpo_loss`.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from contract.chat_format import preference_conversations
from training.chat_template import IGNORE_INDEX, ChatTokenizer, TokenizedExample, tokenize_chat
from training.packing import collate, model_device
from training.token_loss import final_hidden_states, sequence_logps


@dataclass(frozen=True)
class PreferenceExample:
    """The two rows of one preference line; they share the prompt tokens exactly."""

    chosen: TokenizedExample
    rejected: TokenizedExample


def tokenize_preference(
    tokenizer: ChatTokenizer, line: Mapping[str, Any], max_seq_length: int
) -> PreferenceExample:
    """Rows of an OpenAI preference line (already validated), rendered by the model's template.

    ``chosen`` is ``input.messages + preferred_output``, ``rejected`` is ``input.messages +
    non_preferred_output``; only the output turn carries labels (assistant turns of the
    input are context, not trained). ``input.tools`` is handed to the template.

    Truncation keeps the two completions comparable, on the same prompt: when the longer row
    exceeds ``max_seq_length``, the shared prompt loses the same tokens from its start in
    both rows (the system prompt goes first, the turn just before the answer last) until
    that row fits, down to the prompt's last token; a completion still too long is then cut
    at its end.

    With the ChatML tiny tokenizer of the tests::

        >>> ex = tokenize_preference(tok, {
        ...     "input": {"messages": [{"role": "user", "content": "Hi"}]},
        ...     "preferred_output": [{"role": "assistant", "content": "Hello!"}],
        ...     "non_preferred_output": [{"role": "assistant", "content": "No."}]}, 64)
        >>> [tok.decode([t for t in row.labels if t != -100]) for row in (ex.chosen, ex.rejected)]
        ['Hello!<|im_end|>', 'No.<|im_end|>']
    """
    if max_seq_length < 1:
        raise ValueError("max_seq_length must be at least 1")
    chosen, rejected = (
        tokenize_chat(tokenizer, conversation["messages"], sys.maxsize,
                      tools=conversation.get("tools"))
        for conversation in preference_conversations(dict(line))
    )
    shared = min(_prompt_length(chosen), _prompt_length(rejected))
    excess = max(chosen.num_tokens, rejected.num_tokens) - max_seq_length
    # At least the prompt's last token stays: the answer's first token is predicted from it.
    drop = min(max(0, excess), max(0, shared - 1))
    return PreferenceExample(
        chosen=_window(chosen, drop, max_seq_length),
        rejected=_window(rejected, drop, max_seq_length),
    )


def _prompt_length(example: TokenizedExample) -> int:
    """Tokens before the first trained one."""
    return next(
        (i for i, label in enumerate(example.labels) if label != IGNORE_INDEX), example.num_tokens
    )


def _window(example: TokenizedExample, drop: int, max_seq_length: int) -> TokenizedExample:
    end = drop + max_seq_length
    return TokenizedExample(example.input_ids[drop:end], example.labels[drop:end])


@dataclass(frozen=True)
class PreferenceStats:
    """Batch means of one step; a reward is ``beta * (policy - reference)`` log-prob."""

    loss: float
    reward_margin: float
    """Chosen minus rejected reward."""
    reward_accuracy: float
    """Share of pairs whose chosen reward beats the rejected one."""
    chosen_reward: float
    rejected_reward: float
    logp_margin: float
    """Policy log-prob of the chosen answer minus that of the rejected one."""


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, PreferenceStats]:
    """The sigmoid DPO loss ``-log σ(β·((πc - rc) - (πr - rr)))``, averaged over pairs.

    Arguments are per-pair sequence log-probs (``[batch]``). At the start of a LoRA run the
    policy equals the reference, every margin is 0 and the loss is ``log 2``.
    """
    chosen_rewards = beta * (policy_chosen - ref_chosen)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    margins = chosen_rewards - rejected_rewards
    loss = -torch.nn.functional.logsigmoid(margins).mean()
    stats = PreferenceStats(
        loss=float(loss.detach()),
        reward_margin=float(margins.detach().mean()),
        reward_accuracy=float((margins.detach() > 0).float().mean()),
        chosen_reward=float(chosen_rewards.detach().mean()),
        rejected_reward=float(rejected_rewards.detach().mean()),
        logp_margin=float((policy_chosen - policy_rejected).detach().mean()),
    )
    return loss, stats


def preference_batch(
    examples: Sequence[PreferenceExample], pad_id: int
) -> dict[str, torch.Tensor]:
    """One right-padded batch: the ``n`` chosen rows, then the ``n`` rejected rows."""
    rows = [e.chosen for e in examples] + [e.rejected for e in examples]
    return collate(rows, pad_id)


def batch_logps(model: Any, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """One forward of ``model`` over ``batch``; the summed log-probability of each row's
    labelled tokens (:func:`training.token_loss.sequence_logps`: no full logits)."""
    device = model_device(model)
    inputs = {"input_ids": batch["input_ids"].to(device),
              "attention_mask": batch["attention_mask"].to(device), "use_cache": False}
    return sequence_logps(model, final_hidden_states(model, inputs), batch["labels"])


@contextlib.contextmanager
def reference_model(model: Any) -> Iterator[None]:
    """Within this block ``model`` computes the reference: its base, adapter off, no grad.

    ``model`` is a PEFT model, or a DeepSpeed engine whose ``module`` is one; calls still go
    through ``model`` so the engine's hooks (ZeRO-3 parameter gathering) run.
    """
    inner = getattr(model, "module", None)
    peft_model = inner if hasattr(inner, "disable_adapter") else model
    with torch.no_grad(), peft_model.disable_adapter():
        yield


def reference_logps(model: Any, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    with reference_model(model):
        return batch_logps(model, batch)


def preference_step(
    model: Any, examples: Sequence[PreferenceExample], pad_id: int, beta: float
) -> tuple[torch.Tensor, PreferenceStats]:
    """The DPO loss of ``examples`` (call ``backward`` on it) and its stats.

    All ``2n`` rows go through one padded forward for the reference and one for the policy:
    the pair's rows have nearly the same length (same prompt), so padding costs little.
    """
    if not examples:
        raise ValueError("preference_step needs at least one example")
    n = len(examples)
    batch = preference_batch(examples, pad_id)
    ref = reference_logps(model, batch)
    policy = batch_logps(model, batch)
    return dpo_loss(policy[:n], policy[n:], ref[:n], ref[n:], beta)
