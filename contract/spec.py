"""The job spec: everything a training run needs, written by the service, read by the run.

The service resolves a job (files validated, ``auto`` hyperparameters filled in) and writes
this model as ``jobs/{job_id}/spec.json`` (:func:`contract.bucket.spec_key`); the training
driver is started with that object's S3 URL and reads nothing else about the job.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from contract import bucket
from contract.hyperparameters import Hyperparameters

Method = Literal["supervised", "dpo"]


class S3Location(BaseModel):
    """Where the run reads inputs and writes results. Credentials travel as AWS_* env vars."""

    model_config = ConfigDict(extra="forbid")

    endpoint_url: str
    bucket: str
    region: str = "us-east-1"


class TrainingSpec(BaseModel):
    """Everything a training run needs; resolved by the service, never ``"auto"``."""

    model_config = ConfigDict(extra="forbid")

    job_id: str
    base_model_id: str
    base_model_path: str | None = None
    """A folder every Ray node mounts with the base model (a shared volume); ``None``: the
    model is registered in the bucket (``base/{base_model_id}/``) and each node fetches it
    into its own cache (:mod:`contract.model_cache`)."""
    training_file_key: str
    """S3 key of the validated chat JSONL training file."""
    validation_file_key: str | None = None
    model_key: str
    """The adapter goes to ``models/{model_key}/`` (adapter_config.json + safetensors)."""
    method: Method = "supervised"
    """``dpo`` trains on OpenAI's preference lines against the base with the adapter off."""
    hyperparameters: Hyperparameters
    seed: int
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    init_adapter_key: str | None = None
    """Key prefix of a PEFT adapter (``models/<key>/``) to start from: continued training of
    a fine-tuned model or checkpoint. Its LoRA settings win over the spec's."""
    eval_every_steps: int | None = Field(default=None, ge=1)
    """Validation loss every N optimizer steps when a validation file is given; ``None``:
    about ten times per run. A full pass over the validation file runs at the end."""
    s3: S3Location
    checkpoint_every_steps: int | None = Field(default=None, ge=1)
    """Besides one checkpoint at the end of every epoch, also one every N optimizer steps."""
    resume_from: str | None = None
    """Key prefix (in the bucket) of a checkpoint of an earlier run of this job, such as
    ``jobs/<id>/checkpoints/step-00000012/``: the run continues from that step with the same
    weights, optimizer and LR-schedule state and data order, and its metrics events continue
    numbering after it."""
    max_failures: int = Field(default=2, ge=0)
    """Worker-group failures (a worker process killed, a node lost) Ray Train recovers from by
    restarting the workers from the run's last checkpoint; one more fails the run."""

    @model_validator(mode="after")
    def _dpo_has_beta(self) -> TrainingSpec:
        if self.method == "dpo" and self.hyperparameters.beta is None:
            raise ValueError("a DPO run needs hyperparameters.beta")
        return self

    @property
    def events_prefix(self) -> str:
        return bucket.events_prefix(self.job_id)

    @property
    def checkpoints_prefix(self) -> str:
        return bucket.checkpoints_prefix(self.job_id)

    @property
    def adapter_prefix(self) -> str:
        return bucket.adapter_prefix(self.model_key)
