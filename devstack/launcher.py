"""``make run`` (``python -m devstack.launcher``): the whole stack in the foreground on
embedded defaults.

Starts, in order, SeaweedFS (S3) -> Ray head -> the serving app -> the API, and stops them on
Ctrl-C or SIGTERM, the API first. Each embedded server is skipped when its ``OPENFT_*`` URL points
at an existing one. Everything it keeps lives in ``OPENFT_DATA_DIR``, so a second run finds
the files, jobs and models of the first.

Killed outright, it takes its servers with it: the kernel kills each one it started
(:func:`devstack.processes.die_with_parent`) and its watchdog stops what they started
(:mod:`devstack.watchdog`); should anything still be left, the next start stops it first.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import SecretStr

from contract.base_models import MODEL_CACHE_ENV
from contract.serving import serving_token_digest
from devstack.leftovers import LauncherRunning, RecordedProcess, RunRecord, stop_leftovers
from devstack.ports import PortTaken, require_free
from devstack.processes import (
    ManagedProcess,
    die_with_parent,
    free_ports,
    start_ray_head,
    start_seaweedfs,
)
from devstack.watchdog import watch_over_me
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


def ensure_serving_token(settings: Settings) -> Settings:
    """Settings with a serving token: a fresh random one each start, unless the operator set
    one or serving is not deployed here (``OPENFT_SERVING_URL``: its operator's token).

    Fresh each start because serving is deployed again each start; only this process (which
    runs the API) and the deploy command's digest of it ever see it.
    """
    if settings.serving_token is not None or settings.serving_url:
        return settings
    return settings.model_copy(update={"serving_token": SecretStr(secrets.token_urlsafe(32))})


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
        **({"api_token_sha256": serving_token_digest(settings.serving_token.get_secret_value())}
           if settings.serving_token is not None else {}),
    }


def _ray_temp_dir(settings: Settings) -> Path:
    # Ray puts Unix sockets under its temp dir; their paths must stay under ~100 bytes.
    preferred = settings.data_dir / "ray"
    return preferred if len(str(preferred)) <= 40 else Path(f"/tmp/openft-ray-{os.getpid()}")


def pids_file(settings: Settings) -> Path:
    """The record of what the running (or last) launcher on this data dir started."""
    return settings.data_dir / "pids.json"


def clean_up_after_previous_run(settings: Settings) -> None:
    """Stop what a launcher on this data dir left running when it died (SIGKILL, a closed
    terminal); refuse to start beside one that still runs."""
    try:
        stopped = stop_leftovers(pids_file(settings))
    except LauncherRunning as running:
        raise SystemExit(
            f"openft: another launcher (pid {running.launcher.pid}) runs on "
            f"{settings.data_dir}; stop it first (Ctrl-C in its terminal)") from None
    if stopped:
        print(f"openft: stopped what the last run left running: {', '.join(stopped)}",
              flush=True)


def with_free_ports(settings: Settings) -> Settings:
    """Fill in the Ray ports nobody pinned: nothing outside the stack points at them, and a
    fixed default would collide with any other Ray on the host."""
    pinned = {settings.port, settings.s3_port, settings.serving.port,
              settings.ray_gcs_port, settings.ray_dashboard_port}
    gcs, dashboard = free_ports(2, avoid=pinned)
    return settings.model_copy(update={"ray_gcs_port": settings.ray_gcs_port or gcs,
                                       "ray_dashboard_port": settings.ray_dashboard_port
                                       or dashboard})


def ray_ports(settings: Settings) -> tuple[int, int]:
    """The embedded head's GCS and dashboard ports, once :func:`with_free_ports` set them."""
    if settings.ray_gcs_port is None or settings.ray_dashboard_port is None:
        raise ValueError("Ray ports not chosen yet: with_free_ports(settings) first")
    return settings.ray_gcs_port, settings.ray_dashboard_port


def check_ports(settings: Settings) -> None:
    """Fail now, naming the port and its holder, rather than after minutes of starting up,
    or worse, by talking to whatever holds the port instead of our own server."""
    require_free(settings.port, "the API", "OPENFT_PORT", host=settings.host)
    if not settings.s3_endpoint_url:
        require_free(settings.s3_port, "SeaweedFS S3", "OPENFT_S3_PORT")
    if not settings.ray_address:
        gcs, dashboard = ray_ports(settings)
        require_free(gcs, "Ray GCS", "OPENFT_RAY_GCS_PORT")
        require_free(dashboard, "Ray dashboard", "OPENFT_RAY_DASHBOARD_PORT")
        if not settings.serving_url:
            require_free(settings.serving.port, "the serving app", "OPENFT_SERVING_PORT",
                         host=settings.serving.host)


class Children:
    """The processes this launcher started, recorded in ``pids.json`` as each starts, so the
    watchdog and the next start can stop them if this process dies without doing so."""

    def __init__(self, settings: Settings) -> None:
        self.path = pids_file(settings)
        ray_temp = _ray_temp_dir(settings)
        owned_temp = not settings.ray_address and not ray_temp.is_relative_to(settings.data_dir)
        self.record = RunRecord(RecordedProcess.of("launcher", os.getpid()),
                                ray_temp_dir=str(ray_temp) if owned_temp else None)
        self.started: list[ManagedProcess] = []
        self.record.write(self.path)

    def add(self, proc: ManagedProcess) -> None:
        self.started.append(proc)
        self.record.children.append(RecordedProcess.of(proc.name, proc.pid))
        self.record.write(self.path)

    def stop(self) -> None:
        """All at once: each takes seconds to exit (Ray's head about 4, SeaweedFS 2) and by
        now nothing is left to need the others (the API has stopped)."""
        began = time.monotonic()

        def stop(proc: ManagedProcess) -> None:
            proc.stop()
            print(f"openft: stopped {proc.name} (pid {proc.pid}) in "
                  f"{time.monotonic() - began:.1f}s", flush=True)

        with ThreadPoolExecutor(max(1, len(self.started))) as pool:
            list(pool.map(stop, reversed(self.started)))
        if self.record.ray_temp_dir:  # sockets and logs only, under /tmp
            shutil.rmtree(self.record.ray_temp_dir, ignore_errors=True)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    signal.signal(signal.SIGTERM, _raise_interrupt)
    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    clean_up_after_previous_run(settings)
    settings = with_free_ports(settings)
    try:
        check_ports(settings)
    except PortTaken as taken:
        raise SystemExit(str(taken)) from None
    settings, generated_key = ensure_api_key(settings)
    settings = ensure_serving_token(settings)
    children = Children(settings)
    watch_over_me(pids_file(settings), settings.data_dir / "logs" / "watchdog.log")
    try:
        _start_stack(settings, children)
        _serve_api(settings, generated_key)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        children.stop()


def _start_stack(settings: Settings, children: Children) -> None:
    """SeaweedFS, the Ray head, the bucket's base models, the serving app: each unless its
    ``OPENFT_*`` URL points at one that already runs."""
    logs = settings.data_dir / "logs"
    prepare_base_models(settings)
    env = stack_env(settings)
    if not settings.s3_endpoint_url:
        print(f"openft: starting SeaweedFS S3 on 127.0.0.1:{settings.s3_port}", flush=True)
        # Without an endpoint the pair is the configured one or the embedded default.
        access_key, secret_key = settings.s3_credentials() or EMBEDDED_S3_CREDENTIALS
        children.add(start_seaweedfs(
            settings.data_dir / "s3", settings.s3_port, settings.s3_bucket,
            access_key, secret_key, logs))
    if not settings.ray_address:
        gcs, dashboard = ray_ports(settings)
        print(f"openft: starting Ray head ({settings.ray_num_cpus} CPUs, GCS on "
              f"127.0.0.1:{gcs}, dashboard on 127.0.0.1:{dashboard})", flush=True)
        children.add(start_ray_head(_ray_temp_dir(settings), gcs, dashboard,
                                    settings.ray_num_cpus, logs, env))
    register_base_models(settings)
    if not settings.serving_url:
        print("openft: deploying the serving app (vLLM) on Ray Serve", flush=True)
        # The head started above, by the GCS port it was given: never one a dead run left.
        address = (f"127.0.0.1:{settings.ray_gcs_port}" if not settings.ray_address
                   else "auto")
        subprocess.run([sys.executable, "-m", "serving.deploy", "--address", address,
                        "--config", json.dumps(serving_config(settings))],
                       check=True, env=env, preexec_fn=die_with_parent())  # noqa: PLW1509


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
