"""What the serving app needs to know: base models, where adapters live, how big to be.

S3 credentials and endpoint are deliberately absent: replicas read ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY`` and ``AWS_ENDPOINT_URL`` from the environment of the Ray node they
run on, so no secret ever travels through a config file or the Serve controller.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, field_validator, model_validator

from contract.base_models import BaseModelConfig
from contract.bucket import ADAPTERS_PREFIX, base_model_prefix
from contract.serving import SERVING_TOKEN_ENV, ServingOptions


class BaseModelSpec(BaseModelConfig):
    """One base model served by its own vLLM engine: the operator's
    :class:`~contract.base_models.BaseModelConfig` (where it lives, how its engine runs) and
    its id. The launcher passes ``{"id": id, **BaseModelConfig.model_dump()}``."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, pattern=r"^[^:\s]+$")
    """Public id of the base model (``model`` in requests). It may not contain ``:``:
    ``<id>:<model_key>`` names one of its LoRA adapters. Unless ``volume_path`` is set, also
    where the model is registered in the bucket (``base/<id>/``)."""


class ServingConfig(ServingOptions):
    """Everything ``serving.app.build_app`` and ``python -m serving.deploy`` read: the
    operator's :class:`~contract.serving.ServingOptions` plus where the models and adapters
    are."""

    model_config = ConfigDict(extra="forbid")

    base_models: list[BaseModelSpec] = Field(min_length=1)
    """Base models to serve; each gets one Ray Serve LLM deployment and its own engine."""

    s3_bucket: str = Field(min_length=1)
    """Bucket that holds the adapters and the registered base models (endpoint and
    credentials come from the env)."""

    api_token_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    """SHA-256 (hex) of the serving token, the one caller the ingress answers
    (``contract.serving.serving_token_digest``). ``serving.deploy`` fills it from
    ``$OPENFT_SERVING_TOKEN`` when the config leaves it out, and refuses to deploy without
    it: serving open to anyone who reaches it would answer for every organization."""

    adapters_prefix: str = ADAPTERS_PREFIX
    """Key prefix of the adapters: ``s3://<bucket>/<prefix>/<model_key>/`` holds
    ``adapter_config.json`` and ``adapter_model.safetensors``."""

    def token_digest(self) -> str:
        """``api_token_sha256``, which every deploy needs: without it the ingress would have
        no caller to answer, and open, it would answer every organization to anyone."""
        if self.api_token_sha256 is None:
            raise ValueError(f"no serving token: set ${SERVING_TOKEN_ENV} or api_token_sha256 "
                             "(serving answers only the API, which holds the token)")
        return self.api_token_sha256

    @field_validator("autoscaling")
    @classmethod
    def _check_autoscaling(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            # Ray only when autoscaling is set: other configs validate without it.
            from ray.serve.config import AutoscalingConfig

            unknown = sorted(set(value) - set(AutoscalingConfig.model_fields))
            if unknown:  # Ray's model ignores them: a typo would silently not scale
                raise ValueError(f"unknown autoscaling keys: {unknown}")
            AutoscalingConfig(**value)
        return value

    @field_validator("adapters_prefix")
    @classmethod
    def _strip_slashes(cls, value: str) -> str:
        value = value.strip("/")
        if not value:
            raise ValueError("adapters_prefix may not be empty")
        return value

    @model_validator(mode="after")
    def _unique_ids(self) -> ServingConfig:
        ids = [m.id for m in self.base_models]
        if len(set(ids)) != len(ids):
            raise ValueError(f"base model ids must be unique, got {ids}")
        return self

    def base_model_source(self, base: BaseModelSpec) -> str:
        """Where ``base``'s folder comes from: its shared volume, else its bucket prefix.

        Each replica turns an ``s3://`` source into a folder in its node's cache
        (``serving.base_model``); nothing reads either on the deploying machine.

        >>> config = ServingConfig(base_models=[{"id": "m"}], s3_bucket="b")
        >>> config.base_model_source(config.base_models[0])
        's3://b/base/m'
        >>> config.base_model_source(BaseModelSpec(id="m", volume_path="/models/m"))
        '/models/m'
        """
        if base.volume_path is not None:
            return base.volume_path
        return f"s3://{self.s3_bucket}/{base_model_prefix(base.id).rstrip('/')}"

    @property
    def adapters_uri(self) -> str:
        """``s3://<bucket>/<prefix>``: the adapter of ``<base>:<key>`` lies at ``<uri>/<key>``."""
        return f"s3://{self.s3_bucket}/{self.adapters_prefix}"
