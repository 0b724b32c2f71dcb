"""Deploy the serving app into a running Ray cluster and return once it answers.

    python -m serving.deploy --config serving.json [--address 127.0.0.1:6379]
                             [--serve-url http://ray-head:8000]
    python -m serving.deploy --submit http://ray-head:8265 --config JSON [--timeout S]
                             [--keep-deployed SECONDS]

``--config`` is a path to a JSON file or the JSON itself (see ``ServingConfig``). The command
connects to the cluster, puts the engines on its GPUs if it has any (``accelerator``: auto),
starts Serve's HTTP proxy on ``host:port`` if Serve is not running yet, deploys the app
without blocking, waits (bounded by ``ready_timeout_s``) until every base model's engine runs
and the ingress answers, and exits 0. The app keeps running: the Serve controller is a
detached actor. The config carries the digest of the serving token, the one caller serving
answers; without one in the config it is taken from ``$OPENFT_SERVING_TOKEN``, and without
either the command refuses. Exit status 1 means the config was invalid or the app did not
become ready; the message says why.

The first form must run on a Ray node (``make run``, a shell on the head). ``--submit`` is for
a process that is not one, such as the Helm chart's deploy hook: it validates the config here,
then runs the first form on the head as a Ray job through the Jobs API at the dashboard URL,
prints the job's logs as they come and exits with its outcome. It waits for the head to come
up (a fresh cluster pulls its image first). With Ray token auth on, it sends the token in
``$OPENFT_RAY_AUTH_TOKEN`` or ``$RAY_AUTH_TOKEN``. ``--keep-deployed SECONDS`` never exits:
it deploys again whenever the app is missing from the cluster (serving/keeper.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from contract.serving import SERVING_TOKEN_ENV, SERVING_TOKEN_REFUSED, serving_token_digest
from serving.app import build_app
from serving.config import ServingConfig
from serving.keeper import app_missing, keep_deployed


class DeployError(RuntimeError):
    """The app could not be deployed or did not become ready."""


def load_config(value: str, env: Mapping[str, str]) -> ServingConfig:
    """Read ``--config``: inline JSON if it starts with ``{``, else a path to a JSON file.

    Without ``api_token_sha256`` in it, the digest of ``$OPENFT_SERVING_TOKEN`` goes in: the
    Helm chart's deploy steps hold the token as a Secret's key, which a ConfigMap must not.
    The token itself stays in this process; only its digest reaches the cluster.
    """
    text = value if value.lstrip().startswith("{") else Path(value).read_text()
    config = ServingConfig.model_validate_json(text)
    if config.api_token_sha256 is None and env.get(SERVING_TOKEN_ENV):
        config = config.model_copy(
            update={"api_token_sha256": serving_token_digest(env[SERVING_TOKEN_ENV])})
    config.token_digest()  # refused here, before anything is submitted
    return config


def ingress_answers(base_url: str) -> bool:
    """Whether openft's ingress answers at ``base_url``: an unauthenticated ``GET /v1/models``
    gets its 401 ``invalid_serving_token``. This process holds no token (the head does not
    have it), and the refusal is enough to show the proxy routes here."""
    try:
        urllib.request.urlopen(f"{base_url}/v1/models", timeout=10)  # noqa: S310
    except urllib.error.HTTPError as refused:
        try:
            return (refused.code == 401
                    and json.load(refused)["error"]["code"] == SERVING_TOKEN_REFUSED)
        except (OSError, ValueError, KeyError, TypeError):
            return False
    except (urllib.error.URLError, OSError):
        return False
    return False  # an open /v1/models is not openft's ingress


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
    """Poll until the app runs (every base model's engine started: Serve reports RUNNING
    once every replica is up) and its ingress answers at ``serve_url``; raise on a failed
    deploy or after the timeout.

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
            if ingress_answers(serve_url):
                print(f"serving ready at {serve_url}/v1: {sorted(wanted)}", flush=True)
                return
            if now - running_since > silent_proxy_s:
                raise DeployError(
                    f"Serve app {config.app_name!r} is RUNNING but openft's ingress does not "
                    f"answer at {serve_url}; is Serve already running on this cluster with "
                    "another host/port?"
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


def deploy_entrypoint(config_json: str, python: str = "python",
                      serve_url: str | None = None) -> str:
    """The shell command the Ray job runs on the head: this module's first form.

    >>> print(deploy_entrypoint('{"s3_bucket": "b"}'))
    python -m serving.deploy --config '{"s3_bucket": "b"}'
    """
    argv = [python, "-m", "serving.deploy", "--config", config_json]
    return shlex.join(argv + (["--serve-url", serve_url] if serve_url else []))


def submission_id(config_json: str, now: datetime) -> str:
    """Names the deploy among the cluster's Ray jobs: which config, and when (Ray refuses a
    reused id, and a ``helm upgrade`` may deploy the same config again).

    >>> submission_id("{}", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    'openft-serving-deploy-44136fa355b3-20260102T030405Z'
    """
    digest = hashlib.sha256(config_json.encode()).hexdigest()[:12]
    return f"openft-serving-deploy-{digest}-{now:%Y%m%dT%H%M%SZ}"


def auth_headers(env: Mapping[str, str]) -> dict[str, str]:
    """The Ray dashboard's bearer token, when token auth is on. Ray's client adds it by
    itself only where ``RAY_AUTH_MODE=token`` is set, which KubeRay does on Ray pods and
    not on a hook's pod."""
    token = env.get("OPENFT_RAY_AUTH_TOKEN") or env.get("RAY_AUTH_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def submit(entrypoint: str, job_id: str, url: str, headers: dict[str, str],
           timeout: float) -> None:
    """Run ``entrypoint`` as the Ray job ``job_id`` on the cluster whose dashboard is ``url``,
    print its logs as they grow, and return once it succeeded; raise otherwise."""
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + timeout
    client = _until(deadline, f"the Ray Jobs API at {url}",
                    lambda: JobSubmissionClient(url, headers=headers))
    _until(deadline, f"submitting {job_id}", lambda: submit_once(client, entrypoint, job_id))
    print(f"submitted Ray job {job_id} to {url}", flush=True)
    printed = 0
    while True:
        status = str(client.get_job_status(job_id))
        logs = client.get_job_logs(job_id)
        sys.stdout.write(logs[printed:])
        sys.stdout.flush()
        printed = len(logs)
        if status in TERMINAL:
            break
        if time.monotonic() > deadline:
            client.stop_job(job_id)
            raise DeployError(f"Ray job {job_id} still {status} after {timeout:.0f}s; stopped it")
        time.sleep(2)
    if status != "SUCCEEDED":
        message = client.get_job_info(job_id).message or ""
        raise DeployError(f"Ray job {job_id} {status}: {message.strip()}")


def submit_once(client, entrypoint: str, job_id: str) -> None:
    """Submit ``job_id``, or find it already submitted. A submission is retried while the head
    comes up, and a try can reach the head's job agent yet still be answered with an error
    (the dashboard gave up waiting for the agent): the retry is then refused as "already
    exists", and that job is the one this deploy started, not a failure."""
    try:
        client.submit_job(entrypoint=entrypoint, submission_id=job_id)
    except RuntimeError as refused:
        try:
            client.get_job_info(job_id)
        except RuntimeError:
            raise refused from None
        print(f"found Ray job {job_id} already submitted by an earlier try", flush=True)


def _until(deadline: float, what: str, attempt):
    """``attempt()``'s result, retried while the head is not up yet (connection refused,
    no job agent yet) until ``deadline``. A refused token is no such wait: Ray raises
    ``AuthenticationError`` (neither ``OSError`` nor ``RuntimeError``), which ends it."""
    last_said = 0.0
    while True:
        try:
            return attempt()
        except (OSError, RuntimeError) as e:
            now = time.monotonic()
            if now > deadline:
                raise DeployError(f"gave up waiting for {what}: {e}") from e
            if now - last_said > 30:
                print(f"waiting for {what}: {e}", flush=True)
                last_said = now
            time.sleep(3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.deploy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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
    parser.add_argument(
        "--submit", metavar="DASHBOARD_URL",
        help="run the deploy as a Ray job through the Jobs API at this URL "
        "(http://<head>:8265) instead of connecting to Ray from this process",
    )
    parser.add_argument(
        "--timeout", type=float,
        help="with --submit: seconds to wait for the head, the job and the app "
        "(default: the config's ready_timeout_s plus 600)",
    )
    parser.add_argument(
        "--keep-deployed", type=float, metavar="SECONDS",
        help="with --submit: do not exit; every SECONDS, deploy again when the app is "
        "missing from the cluster (a replaced head), unless a deploy is running "
        "(serving/keeper.py)",
    )
    parser.add_argument(
        "--entrypoint-python", default="python",
        help="with --submit: the interpreter the job runs, as the head names it "
        "(default: python, the image's)",
    )
    args = parser.parse_args(argv)
    if args.submit is None and (args.timeout is not None or args.keep_deployed is not None
                                or args.entrypoint_python != "python"):
        parser.error("--timeout, --keep-deployed and --entrypoint-python go with --submit")
    if args.keep_deployed is not None and args.keep_deployed <= 0:
        parser.error("--keep-deployed must be positive")
    if args.timeout is not None and args.timeout <= 0:
        parser.error("--timeout must be positive")
    try:
        config = load_config(args.config, os.environ)
    except (OSError, ValidationError, ValueError) as e:
        print(f"serving.deploy: invalid config: {e}", file=sys.stderr)
        return 1
    try:
        if args.submit:
            url, headers = args.submit.rstrip("/"), auth_headers(os.environ)

            def submit_deploy() -> None:
                # Read again each time: a file (a ConfigMap) may have changed since the start.
                now = load_config(args.config, os.environ) if args.keep_deployed else config
                # Inline and as given (a file here is not on the head); the head applies
                # defaults.
                config_json = now.model_dump_json(exclude_unset=True)
                submit(deploy_entrypoint(config_json, args.entrypoint_python, args.serve_url),
                       submission_id(config_json, datetime.now(UTC)), url, headers,
                       args.timeout if args.timeout is not None
                       else config.ready_timeout_s + 600)

            if args.keep_deployed is None:
                submit_deploy()
            else:
                keep_deployed(lambda: app_missing(url, headers, config.app_name),
                              submit_deploy, args.keep_deployed)
        else:
            deploy(config, args.address,
                   (args.serve_url or default_serve_url(config)).rstrip("/"))
    except Exception as e:  # noqa: BLE001 - one clear line for the launcher, whatever failed
        print(f"serving.deploy: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
