"""Wire shapes of the fine-tuning jobs API, with OpenAI's field names."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from contract.hyperparameters import (
    Auto,
    BatchSize,
    DpoBeta,
    LearningRateMultiplier,
    LoraAlpha,
    LoraDropout,
    LoraRank,
    LrScheduler,
    MaxSeqLength,
    NEpochs,
    NumWorkers,
    TargetModules,
    WarmupRatio,
    ZeroStage,
)
from service.lifecycle import JobStatus
from service.text import Text

WandbName = Annotated[Text, Field(min_length=1, max_length=128)]
WandbTag = Annotated[Text, Field(min_length=1, max_length=64)]

STRICT = ConfigDict(extra="forbid", strict=True)
"""As OpenAI's types are: ``true`` is no number, ``"yes"`` no boolean and ``"3"`` no integer
(an integer is a number, as in JSON); unknown keys are refused, naming the key."""


class Hyperparameters(BaseModel):
    model_config = STRICT

    # OpenAI's bounds: a job that could never train is refused at creation, naming the field.
    batch_size: Auto | BatchSize | None = Field(default="auto")
    learning_rate_multiplier: Auto | LearningRateMultiplier = Field(default="auto")
    n_epochs: Auto | NEpochs = Field(default="auto")


class SupervisedHyperparameters(Hyperparameters):
    """OpenAI's three, plus the knobs a practitioner expects; ``auto`` follows the rule in
    :mod:`service.jobs.hyperparameters` (README). Unknown keys: 400 naming the key."""

    lora_r: Auto | LoraRank = "auto"
    lora_alpha: Auto | LoraAlpha = "auto"
    lora_dropout: Auto | LoraDropout = "auto"
    lora_target_modules: Auto | TargetModules = "auto"
    full_finetune: bool = False
    lr_scheduler: Auto | LrScheduler = "auto"
    warmup_ratio: Auto | WarmupRatio = "auto"
    max_seq_length: Auto | MaxSeqLength = "auto"
    packing: Auto | bool = "auto"
    zero_stage: Auto | ZeroStage = "auto"
    gradient_checkpointing: Auto | bool = "auto"
    num_workers: Auto | NumWorkers = "auto"


class DpoHyperparameters(SupervisedHyperparameters):
    beta: Auto | DpoBeta = "auto"


class SupervisedMethod(BaseModel):
    model_config = STRICT

    hyperparameters: SupervisedHyperparameters | None = None


class DpoMethod(BaseModel):
    model_config = STRICT

    hyperparameters: DpoHyperparameters | None = None


class Method(BaseModel):
    model_config = STRICT

    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None
    reinforcement: dict[str, Any] | None = None
    """Accepted in shape only: the service answers 400 (no reinforcement fine-tuning)."""

    @model_validator(mode="after")
    def _section_of_its_type(self) -> Method:
        # Hyperparameters under another method's key would be dropped without a word.
        other = [k for k in ("supervised", "dpo", "reinforcement")
                 if k != self.type and getattr(self, k) is not None]
        if other:
            raise ValueError(f"method.{other[0]} is given but method.type is {self.type!r}")
        return self

    def requested_hyperparameters(self) -> Hyperparameters | None:
        """The hyperparameters given under the method's own key, if any."""
        section = self.dpo if self.type == "dpo" else self.supervised
        return section.hyperparameters if section is not None else None


class WandbSettings(BaseModel):
    """Stored with the job: bounded as W&B bounds them (names of 128 characters, tags of 64)."""

    model_config = ConfigDict(strict=True)

    project: WandbName
    name: WandbName | None = None
    entity: WandbName | None = None
    tags: list[WandbTag] | None = Field(default=None, max_length=50)


class Integration(BaseModel):
    """Stored and echoed as OpenAI's shape; openft itself reports to no tracker (docs/api.md)."""

    model_config = ConfigDict(strict=True)

    type: Literal["wandb"]
    wandb: WandbSettings


class DataChecks(BaseModel):
    """Extension (docs/api.md): fail the job at validation, naming the lines, when its data
    report finds validation rows that are also training rows, or likely secrets/PII."""

    model_config = STRICT

    fail_on_leakage: bool = False
    fail_on_secrets: bool = False


class CreateJobRequest(BaseModel):
    model_config = STRICT

    model: Text
    training_file: Text
    validation_file: Text | None = None
    hyperparameters: Hyperparameters | None = None
    suffix: str | None = Field(default=None, min_length=1, max_length=64,
                               pattern=r"^[A-Za-z0-9_-]+$")
    seed: int | None = Field(default=None, ge=0, le=2147483647)
    method: Method | None = None
    metadata: dict[Text, Text] | None = None
    integrations: list[Integration] | None = Field(default=None, max_length=5)
    data_checks: DataChecks | None = None


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class BestCheckpoint(BaseModel):
    id: str
    step_number: int
    fine_tuned_model_checkpoint: str
    full_valid_loss: float


class FineTuningJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobError | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    hyperparameters: dict[str, Any]
    model: str
    organization_id: str
    result_files: list[str]
    status: JobStatus
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    integrations: list[dict[str, Any]] | None = None
    seed: int
    estimated_finish: int | None = None
    method: dict[str, Any]
    metadata: dict[str, str] | None = None
    best_checkpoint: BestCheckpoint | None = None
    """Extension: the checkpoint with the lowest full validation loss (docs/api.md)."""
    base_valid_loss: float | None = None
    """Extension: the base model's full validation loss before training."""


class JobEvent(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: str
    message: str
    type: str = "message"
    data: dict[str, Any] | None = None


class JobCheckpoint(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: dict[str, Any]
    step_number: int
