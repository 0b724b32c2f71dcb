"""Deploy the serving app into a running Ray cluster and return once it answers.

    python -m serving.deploy --config serving.json [--address 127.0.0.1:6379]
                             [--serve-url http://ray-head:8000]

``--config`` is a path to a JSON file or the JSON itself (see ``ServingConfig``). The command
connects to the cluster, puts the engines on its GPUs if it has any (``accelerator``: auto),
starts Serve's HTTP proxy on ``host:port`` if Serve is not running yet, deploys the app
without blocking, waits (bounded by ``ready_timeout_s``) until ``GET /v1/models`` lists every
base model, and exits 0. The app keeps running: the Serve
controller is a detached actor. Exit status 1 means the config was invalid or the app did not
become ready; the message says why.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from pydantic import ValidationError

from serving.app import build_app
from serving.config import ServingConfig


class DeployError(RuntimeError):
    """The app could not be deployed or did not become ready."""


def load_config(value: str) -> ServingConfig:
    """Read ``--config``: inline JSON if it starts with ``{``, else a path to a JSON file."""
    text = value if value.lstrip().startswith("{") else Path(value).read_text()
    return ServingConfig.model_validate_json(text)


def listed_models(base_url: str) -> set[str]:
    """Ids ``GET /v1/models`` lists now; empty while the proxy or app is not up."""
    try:
        with urllib.request.urlopen(f"{base_url}/v1/models", timeout=10) as resp:  # noqa: S310
            return {m["id"] for m in json.load(resp).get("data", [])}
    except (urllib.error.URLError, OSError, ValueError, KeyError):
        return set()


def app_status(app_name: str) -> tuple[str, str]:
    """(status, message) of the Serve application, ``("MISSING", "")`` before it exists.

    The message ends with the last line of each unhealthy deployment's error, which is
    where the cause (a bad model path, too little memory) shows up.
    """
    # Ray only once deploying: load_config and main's config checks run without it.
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None:
        return "MISSING", ""
    causes = [
        f"{name}: {deployment.message.strip().splitlines()[-1]}"
        for name, deployment in app.deployments.items()
        if deployment.message.strip() and not str(deployment.status).endswith("HEALTHY")
    ]
    return str(app.status), " ".join([app.message, *causes]).strip()


def deploy(config: ServingConfig, address: str, serve_url: str) -> None:
    """Deploy ``config`` into the cluster at ``address`` and wait until ``serve_url`` serves."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # read when Ray connects
    # Ray only once deploying: load_config and main's config checks run without it.
    import ray
    from ray import serve

    ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    accelerator = config.resolve_accelerator(ray.cluster_resources().get("GPU", 0))
    print(f"engines on {accelerator} (accelerator={config.accelerator})", flush=True)
    # Only the first start on a cluster applies http_options; see wait_ready for the other case.
    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run_many(
        [serve.RunTarget(build_app(config, accelerator), name=config.app_name,
                         route_prefix="/")],
        wait_for_ingress_deployment_creation=False,
        wait_for_applications_running=False,
    )
    wait_ready(config, serve_url)


def wait_ready(config: ServingConfig, serve_url: str, silent_proxy_s: float = 60.0) -> None:
    """Poll until every base model is listed; raise on a failed deploy or after the timeout.

    An app that Serve reports RUNNING while ``serve_url`` stays silent for ``silent_proxy_s``
    means the URL is wrong, typically because Serve was already running on this cluster
    with other ``http_options`` (Serve keeps its first ones).
    """
    wanted = {m.id for m in config.base_models}
    started = time.monotonic()
    running_since: float | None = None
    last = ""
    while (now := time.monotonic()) - started < config.ready_timeout_s:
        status, message = app_status(config.app_name)
        if status.endswith("DEPLOY_FAILED"):
            raise DeployError(f"Serve app {config.app_name!r} failed to deploy: {message}")
        if status.endswith("RUNNING"):
            running_since = running_since or now
            if wanted <= listed_models(serve_url):
                print(f"serving ready at {serve_url}/v1: {sorted(wanted)}", flush=True)
                return
            if now - running_since > silent_proxy_s:
                raise DeployError(
                    f"Serve app {config.app_name!r} is RUNNING but {serve_url}/v1/models does "
                    f"not list {sorted(wanted)}; is Serve already running on this cluster "
                    "with another host/port?"
                )
        else:
            running_since = None
        progress = f"app {config.app_name!r}: {status.rsplit('.', 1)[-1]}"
        if progress != last:
            print(f"[{now - started:5.0f}s] {progress}", flush=True)
            last = progress
        time.sleep(2)
    raise DeployError(
        f"Serve app {config.app_name!r} not ready after {config.ready_timeout_s:.0f}s "
        f"(last: {last}); see the Serve logs under the Ray session's logs/serve/"
    )


def default_serve_url(config: ServingConfig) -> str:
    """Where this process reaches the proxy when it runs on the Ray head itself."""
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::", "") else config.host  # noqa: S104
    return f"http://{host}:{config.port}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.deploy", description=__doc__)
    parser.add_argument("--config", required=True, help="JSON file or inline JSON")
    parser.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS", "auto"),
        help="Ray GCS address (host:port) or 'auto' (default: $RAY_ADDRESS or auto)",
    )
    parser.add_argument(
        "--serve-url",
        help="base URL to check readiness at, when this process does not run on the Ray head "
        "(default: http://<host>:<port> from the config)",
    )
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except (OSError, ValidationError, ValueError) as e:
        print(f"serving.deploy: invalid config: {e}", file=sys.stderr)
        return 1
    try:
        deploy(config, args.address, (args.serve_url or default_serve_url(config)).rstrip("/"))
    except Exception as e:  # noqa: BLE001 - one clear line for the launcher, whatever failed
        print(f"serving.deploy: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
