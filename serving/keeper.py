"""Keep the serving app deployed on a Ray cluster whose head can be replaced.

A Serve application lives in the head's GCS: when KubeRay replaces the head pod (a node
drained, the head's container killed), the new cluster has no application, and nothing would
deploy it again until the next ``helm upgrade``. The chart runs this loop beside the head
(``python -m serving.deploy --submit http://127.0.0.1:8265 --config ... --keep-deployed 30``):
each period it asks the dashboard's Serve API whether the application exists and, when it is
missing and no deploy is already running (the install hook's, say), submits the deploy as a
Ray job, exactly as ``--submit`` does.

Only public HTTP endpoints of the dashboard: ``GET /api/serve/applications/`` and the Jobs API.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

DEPLOY_JOB_PREFIX = "openft-serving-deploy-"
"""Submission ids of deploys (``serving.deploy.submission_id``): a running one is waited for."""


def serve_applications(url: str, headers: dict[str, str],
                       timeout: float = 10.0) -> dict[str, Any] | None:
    """The cluster's Serve applications by name; ``None`` while the dashboard does not answer
    (a head starting up). Serve not started at all is no application: ``{}``."""
    request = urllib.request.Request(f"{url}/api/serve/applications/", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310
            body = json.load(resp)
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return dict(body.get("applications") or {})


def needs_deploy(applications: dict[str, Any] | None, app_name: str,
                 deploys_running: bool) -> bool:
    """Whether to deploy now: the dashboard answers, the app is not there, and no deploy
    job is on its way.

    >>> needs_deploy({}, "openft-serving", False)
    True
    >>> needs_deploy({"openft-serving": {"status": "RUNNING"}}, "openft-serving", False)
    False
    >>> needs_deploy({}, "openft-serving", True), needs_deploy(None, "openft-serving", False)
    (False, False)
    """
    return applications is not None and app_name not in applications and not deploys_running


def deploys_running(url: str, headers: dict[str, str]) -> bool:
    """Whether a deploy job (ours or the install hook's) is pending or running."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(url, headers=headers)
    return any((job.submission_id or "").startswith(DEPLOY_JOB_PREFIX)
               and str(job.status) in ("PENDING", "RUNNING") for job in client.list_jobs())


def app_missing(url: str, headers: dict[str, str], app_name: str) -> bool:
    """One check against the cluster: the dashboard answers, the app is not there, and no
    deploy job is on its way."""
    applications = serve_applications(url, headers)
    return applications is not None and needs_deploy(
        applications, app_name, deploys_running(url, headers))


def keep_deployed(missing: Callable[[], bool], deploy: Callable[[], None], every_s: float,
                  rounds: int | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
    """Check every ``every_s`` seconds and ``deploy()`` when ``missing()``; forever, or
    ``rounds`` checks. A failed check or deploy is reported and tried again later. The first
    check comes after a period: on a fresh install the hook's deploy is usually submitted by
    then, and this one need not race it."""
    done = 0
    while rounds is None or done < rounds:
        done += 1
        sleep(every_s)
        try:
            if missing():
                print("the Serve app is not on the cluster (a new head?): deploying", flush=True)
                deploy()
        except Exception as e:  # noqa: BLE001 - report it and keep watching
            print(f"keep-deployed: {type(e).__name__}: {e}", flush=True)
