"""Public and internal model names (docs/architecture.md, "Names")."""

from __future__ import annotations


def fine_tuned_model_name(base: str, organization: str, suffix: str | None, key: str) -> str:
    """OpenAI's shape: ``ft:<base>:<org>:<suffix>:<id>``; no suffix leaves ``::``."""
    return f"ft:{base}:{organization}:{suffix or ''}:{key}"


def checkpoint_name(fine_tuned_model: str, step: int) -> str:
    return f"{fine_tuned_model}:ckpt-step-{step}"


def internal_name(base: str, model_key: str) -> str:
    """What serving understands: ``<base_id>:<model_key>`` (adapter at models/<model_key>/)."""
    return f"{base}:{model_key}"
