"""The hyperparameters of a run: their bounds and fixed defaults, defined once.

Three readers share these definitions: the API's request models (``service/jobs/protocol.py``
accepts each knob as ``"auto"`` or a value within the bounds below), the service's ``auto``
rule (``service/jobs/hyperparameters.py`` fills in what was left ``auto``, taking the fixed
defaults from :class:`Hyperparameters`), and the training loop, which reads the resolved
:class:`Hyperparameters` from the job spec. A new knob is one field here plus, if its
``auto`` depends on the data, one line of the rule.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Auto = Literal["auto"]
"""What a request says for "choose for me"; never reaches a run."""

# Bounds, as a request is checked against them (OpenAI's for its three). Every float is
# finite: JSON has no Infinity or NaN, but Python's parser reads them, and NaN slips past
# every bound (any comparison with it is false).
NEpochs = Annotated[int, Field(ge=1, le=50)]
BatchSize = Annotated[int, Field(ge=1, le=256)]
"""Examples per optimizer step, across all workers."""
LearningRateMultiplier = Annotated[float, Field(gt=0, allow_inf_nan=False)]
LoraRank = Annotated[int, Field(ge=1, le=256)]
LoraAlpha = Annotated[int, Field(ge=1, le=4096)]
LoraDropout = Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]
ModuleName = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.*-]+$")]
TargetModules = Annotated[list[ModuleName], Field(min_length=1, max_length=64)]
ALL_LINEAR = "all-linear"
"""Every linear layer but the LM head (PEFT's own shorthand)."""
LrScheduler = Literal["linear", "cosine"]
WarmupRatio = Annotated[float, Field(ge=0, le=0.5, allow_inf_nan=False)]
MaxSeqLength = Annotated[int, Field(ge=16, le=131072)]
ZeroStage = Literal[2, 3]
NumWorkers = Annotated[int, Field(ge=1, le=64)]
DpoBeta = Annotated[float, Field(gt=0, le=2, allow_inf_nan=False)]

TOKENS_PER_FORWARD = 8192
"""The most tokens one training forward holds (a micro-batch; one example when a single one
is longer): training splits each step by it, and the service's memory estimate counts on it."""

DPO_BETA = 0.1
"""DPO's ``beta`` when a job leaves it ``auto`` (other methods have none)."""

OPENAI_KEYS = ("batch_size", "learning_rate_multiplier", "n_epochs")
"""What OpenAI's (deprecated) top-level ``hyperparameters`` of a job shows."""


class Hyperparameters(BaseModel):
    """Every knob of a run, resolved: no ``"auto"`` left.

    Defaults here are the fixed ones; those that depend on the data or the deployment
    (epochs, batch size, rank, sequence length, workers, the learning rate) have none and
    come from the service's ``auto`` rule.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_epochs: NEpochs
    batch_size: BatchSize
    """Examples per optimizer step, across all workers (a multiple of ``num_workers``)."""
    learning_rate_multiplier: LearningRateMultiplier = 1.0
    """OpenAI's knob: a factor on the method's base rate."""
    learning_rate: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    """The absolute peak rate the optimizer uses: base rate times the multiplier."""
    lora_r: LoraRank
    """Rank of the low-rank update; serving must allow at least this rank."""
    lora_alpha: LoraAlpha
    """Scale numerator: the update is multiplied by alpha / r."""
    lora_dropout: LoraDropout = 0.0
    lora_target_modules: TargetModules | Literal["all-linear"] = ALL_LINEAR
    """Module names to adapt; ``all-linear`` adapts every linear layer but the LM head."""
    full_finetune: bool = False
    """Train every weight instead of a LoRA adapter; the result is a whole model."""
    lr_scheduler: LrScheduler = "linear"
    """Decay after warmup, to 0 at the end of the run."""
    warmup_ratio: WarmupRatio = 0.1
    """Share of the optimizer steps with a linearly rising learning rate (at least one)."""
    max_seq_length: MaxSeqLength
    """Longer examples are truncated."""
    packing: bool = True
    """Pack each step's examples into rows of ``max_seq_length`` tokens (attention and
    positions kept per example); the loss is the same as without, only faster."""
    zero_stage: ZeroStage = 2
    gradient_checkpointing: bool = False
    """Recompute activations in backward: less memory for long sequences, about 30% slower."""
    num_workers: NumWorkers
    beta: DpoBeta | None = None
    """DPO only: strength of the pull towards the reference model (higher: stay closer)."""

    def openai_dict(self) -> dict[str, Any]:
        """OpenAI's three, as the job's top-level ``hyperparameters``."""
        return {key: getattr(self, key) for key in OPENAI_KEYS}

    def method_dict(self) -> dict[str, Any]:
        """What the job shows as ``method.<type>.hyperparameters``: every knob a user can set
        (the absolute ``learning_rate`` is derived, and ``beta`` is DPO's only)."""
        return self.model_dump(mode="json", exclude={"learning_rate"},
                               exclude_none=True)


DEFAULTS = {name: field.default for name, field in Hyperparameters.model_fields.items()
            if not field.is_required()}
"""The fixed defaults, for the ``auto`` rule to fall back on."""
