"""``make run`` (``python -m devstack.launcher``): the whole stack in the foreground on
embedded defaults.

Starts, in order, SeaweedFS (S3) -> Ray head -> the serving app -> the API, and stops them in
reverse on Ctrl-C or SIGTERM. Each embedded server is skipped when its ``OPENFT_*`` URL points
at an existing one. Everything it keeps lives in ``OPENFT_DATA_DIR``, so a second run finds
the files, jobs and models of the first.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import uvicorn

from contract.base_models import MODEL_CACHE_ENV
from devstack.processes import ManagedProcess, start_ray_head, start_seaweedfs
from service.auth import generate_key
from service.base_models.service import register, registered_manifest
from service.main import create_app
from service.settings import DEFAULT_BASE_MODEL_ID, EMBEDDED_S3_CREDENTIALS, Settings
from service.storage import BlobStore

log = logging.getLogger("openft.launcher")
DEFAULT_ORGANIZATION = "personal"


def _raise_interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def ensure_api_key(settings: Settings) -> tuple[Settings, str | None]:
    """Keep the one generated key in the data dir, so restarts keep working clients."""
    if settings.api_keys:
        return settings, None
    key_file = settings.data_dir / "api_key"
    if not key_file.exists():
        key_file.write_text(generate_key() + "\n")
        key_file.chmod(0o600)
    key = key_file.read_text().strip()
    return settings.model_copy(update={"api_keys": f"{key}={DEFAULT_ORGANIZATION}"}), key


def prepare_base_models(settings: Settings) -> None:
    """Convert the default base model (once) and check every shared-volume model's folder;
    bucket models need nothing on this disk (:func:`register_base_models` checks them)."""
    if settings.default_base_model:
        subprocess.run([sys.executable, "-m", "devstack.base_model", "--out",
                        str(default_model_dir(settings))], check=True)
    for model_id, config in settings.base_model_configs().items():
        if config.volume_path and not (Path(config.volume_path) / "config.json").exists():
            raise SystemExit(f"base model {model_id}: no config.json in {config.volume_path}")


def default_model_dir(settings: Settings) -> Path:
    """Where ``make run`` converts SmolLM2 before registering it in the bucket."""
    return settings.base_model_cache_dir / DEFAULT_BASE_MODEL_ID


def register_base_models(settings: Settings) -> None:
    """With the bucket up and before serving deploys: register the default model (a no-op
    once it is) and refuse to start with a bucket model nobody registered."""
    blobs = BlobStore.from_settings(settings)
    blobs.ensure_bucket()
    if settings.default_base_model:
        done = register(blobs, DEFAULT_BASE_MODEL_ID, default_model_dir(settings))
        if not done.unchanged:
            print(f"openft: registered {DEFAULT_BASE_MODEL_ID} in the bucket "
                  f"({len(done.uploaded)} files uploaded)", flush=True)
    for model_id, config in settings.base_model_configs().items():
        if config.volume_path is None and registered_manifest(blobs, model_id) is None:
            raise SystemExit(f"base model {model_id} is not registered in the bucket: "
                             f"python -m service.base_models register --id {model_id} FOLDER")


def node_cache_dir(settings: Settings) -> Path:
    """The embedded Ray head's base model cache: the one node fetches each model once."""
    return settings.data_dir / "node-cache"


def stack_env(settings: Settings) -> dict[str, str]:
    """Environment of the Ray head: its workers (training, serving) read the bucket with it."""
    endpoint = settings.resolved_s3_endpoint_url
    keys = settings.s3_credentials()  # None: the default chain (an IAM role) on this host
    return dict(
        os.environ,
        **({"AWS_ACCESS_KEY_ID": keys[0], "AWS_SECRET_ACCESS_KEY": keys[1]} if keys else {}),
        AWS_ENDPOINT_URL=endpoint,
        AWS_ENDPOINT_URL_S3=endpoint,
        AWS_REGION=settings.s3_region,
        AWS_DEFAULT_REGION=settings.s3_region,
        **{MODEL_CACHE_ENV: str(node_cache_dir(settings))},
        RAY_AUTH_MODE="disabled",
        RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.2",
        # vLLM reads it as whole GiB; the engine gets the exact size as kv_cache_memory_bytes.
        VLLM_CPU_KVCACHE_SPACE=str(math.ceil(settings.serving.kv_cache_gib)),
    )


def serving_config(settings: Settings) -> dict[str, Any]:
    """``serving.deploy``'s config: the ``OPENFT_SERVING_*`` options as they are, plus the
    base models (each with its engine settings and where it lives) and the bucket."""
    return {
        **settings.serving.options().model_dump(mode="json"),
        "base_models": [{"id": k, **c.model_dump(mode="json")}
                        for k, c in settings.base_model_configs().items()],
        "s3_bucket": settings.s3_bucket,
    }


def _ray_temp_dir(settings: Settings) -> Path:
    # Ray puts Unix sockets under its temp dir; their paths must stay under ~100 bytes.
    preferred = settings.data_dir / "ray"
    return preferred if len(str(preferred)) <= 40 else Path(f"/tmp/openft-ray-{os.getpid()}")


def _record_pids(settings: Settings, started: list[ManagedProcess]) -> None:
    """Process groups this run owns, so a supervisor can clean up even after a SIGKILL."""
    (settings.data_dir / "pids.json").write_text(
        json.dumps({p.name: p.pid for p in started}))


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    signal.signal(signal.SIGTERM, _raise_interrupt)
    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings, generated_key = ensure_api_key(settings)
    logs = settings.data_dir / "logs"
    started: list[ManagedProcess] = []
    try:
        prepare_base_models(settings)
        env = stack_env(settings)
        if not settings.s3_endpoint_url:
            print(f"openft: starting SeaweedFS S3 on 127.0.0.1:{settings.s3_port}", flush=True)
            # Without an endpoint the pair is the configured one or the embedded default.
            access_key, secret_key = settings.s3_credentials() or EMBEDDED_S3_CREDENTIALS
            started.append(start_seaweedfs(
                settings.data_dir / "s3", settings.s3_port, settings.s3_bucket,
                access_key, secret_key, logs))
            _record_pids(settings, started)
        if not settings.ray_address:
            print(f"openft: starting Ray head ({settings.ray_num_cpus} CPUs)", flush=True)
            started.append(start_ray_head(
                _ray_temp_dir(settings), settings.ray_gcs_port, settings.ray_dashboard_port,
                settings.ray_num_cpus, logs, env))
        _record_pids(settings, started)
        register_base_models(settings)
        if not settings.serving_url:
            print("openft: deploying the serving app (vLLM) on Ray Serve", flush=True)
            address = (f"127.0.0.1:{settings.ray_gcs_port}" if not settings.ray_address
                       else "auto")
            subprocess.run([sys.executable, "-m", "serving.deploy", "--address", address,
                            "--config", json.dumps(serving_config(settings))],
                           check=True, env=env)
        _serve_api(settings, generated_key)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for proc in reversed(started):
            print(f"openft: stopping {proc.name} (pid {proc.pid})", flush=True)
            proc.stop()
        ray_temp = _ray_temp_dir(settings)
        if not settings.ray_address and not ray_temp.is_relative_to(settings.data_dir):
            shutil.rmtree(ray_temp, ignore_errors=True)  # sockets and logs only, under /tmp


def _serve_api(settings: Settings, generated_key: str | None) -> None:
    base_url = f"http://{settings.host}:{settings.port}/v1"
    print(f"\nopenft is up: base URL {base_url}", flush=True)
    if generated_key:
        print(f"API key (kept in {settings.data_dir / 'api_key'}): {generated_key}", flush=True)
    print("Base models: " + ", ".join(settings.base_model_configs()), flush=True)
    config = uvicorn.Config(create_app(settings), host=settings.host, port=settings.port,
                            log_level="info", access_log=False)
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
