"""A Ray Train worker killed mid-run: Ray Train restarts the workers from the run's last
checkpoint and the job still succeeds, as if nothing had happened.

Same stack as ``test_checkpoints.py``: the driver through Ray's Jobs API, two gloo workers,
DeepSpeed ZeRO-2, PEFT LoRA on the tiny Llama, 12 examples, 4 per optimizer step.
"""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from contract.bucket import checkpoint_key
from tests.training.runs import make_spec, of_type, read_events, start, upload_pairs, wait
from tests.training.test_checkpoints import assert_same_losses, assert_same_tensors, load_adapter
from training.checkpoints import restart_message


@pytest.fixture(scope="module")
def reference(s3_server, ray_head, tiny_model_dir):
    """A run that nobody interrupts, started once; it runs beside the first failing run (the
    test head has 4 CPUs, a run takes 2). Yields its spec and ``wait``'s arguments."""
    spec = make_spec(s3_server, tiny_model_dir, upload_pairs(s3_server), **FIELDS)
    client, submission_id = start(ray_head, s3_server, spec)
    yield spec, (client, submission_id)
    client.stop_job(submission_id)  # when a test failed before waiting for it


FIELDS = dict(n_epochs=6, zero_stage=2, checkpoint_every_steps=4, max_failures=1)
TOTAL_STEPS = FIELDS["n_epochs"] * 3  # 12 examples, 4 a step
"""A checkpoint every 4 steps and at every epoch end (3 steps): the kill lands right after
the first, with 14 steps and 8 checkpoints still to come."""


SLOW_CONTROLLER = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "2"}
"""Ray's default poll interval (the service sets 0.2 s). Ray Train's controller takes the
workers' reports, and so registers a checkpoint, only when it polls them; the test kills the
worker as soon as the checkpoint event is in S3. Were that event emitted before the poll, the
kill would mostly land inside this window and the restart begin from scratch, although the
user was shown the checkpoint (CI once caught it at 0.2 s on a loaded machine)."""


@pytest.mark.slow
@pytest.mark.parametrize("rank", [0, 1])
def test_a_killed_worker_restarts_from_the_last_checkpoint_and_the_job_succeeds(
    s3_server, ray_head, tiny_model_dir, tmp_path, reference, rank
):
    """Rank 0 writes the events and uploads adapters; rank 1 dies with rank 0 still inside a
    collective. Either way the job ends as the uninterrupted run does, bit for bit."""
    reference_spec, reference_run = reference
    spec = make_spec(s3_server, tiny_model_dir, reference_spec.training_file_key, **FIELDS)
    client, submission_id = start(ray_head, s3_server, spec, env=SLOW_CONTROLLER)
    pid = wait_for_worker_pid(ray_head, client, submission_id, rank)
    first_checkpoint = wait_for_checkpoint(s3_server, spec.job_id)
    os.kill(pid, signal.SIGKILL)
    status, logs = wait(client, submission_id)

    assert status == "SUCCEEDED", logs[-5000:]
    assert "[FailurePolicy] RETRY" in logs, logs[-5000:]  # Ray Train's own decision
    _, events = read_events(s3_server, spec.job_id)
    restarts = [e for e in events if e["message"].startswith("Training restarted")]
    assert len(restarts) == 1, ([e["message"] for e in events], logs[-5000:])
    [restart] = restarts
    step = restart["data"]["step"]
    assert restart["message"] == restart_message(step)
    before, after = split_at(events, restart)
    seen = [m["step"] for m in of_type(before, "metrics")]
    print(
        f"killed rank {rank} (pid {pid}) after the checkpoint of step {first_checkpoint}; "
        f"metrics in S3 up to step {seen[-1]}; restarted after step {step}"
    )
    assert first_checkpoint <= step
    # The failed attempt's metrics have no gap and reach the checkpoint (it flushes them
    # before Ray Train takes the checkpoint); the restart continues right after it.
    assert seen == list(range(1, len(seen) + 1)) and len(seen) >= step, seen
    assert [m["step"] for m in of_type(after, "metrics")] == list(range(step + 1, TOTAL_STEPS + 1))
    # The restarted attempt first announces the checkpoint it starts from (again, when the
    # failed one got to it: harmless, the service upserts checkpoint rows by step).
    after_checkpoints = of_type(after, "checkpoint")
    assert after_checkpoints[0]["step"] == step
    assert after_checkpoints[0]["checkpoint_key"] == checkpoint_key(spec.job_id, step)
    assert all(c["step"] > step for c in after_checkpoints[1:])
    assert [e["type"] for e in events].count("result") == 1
    assert events[-1]["type"] == "result"

    status, logs = wait(*reference_run)
    assert status == "SUCCEEDED", logs[-5000:]
    _, reference_events = read_events(s3_server, reference_spec.job_id)
    expected = of_type(reference_events, "metrics")
    # Exact resume: both attempts report the uninterrupted run's metrics, bit for bit.
    assert_same_losses(of_type(before, "metrics"), expected[: len(seen)])
    assert_same_losses(of_type(after, "metrics"), expected[step:])
    assert {c["step"] for c in of_type(events, "checkpoint")} == {
        c["step"] for c in of_type(reference_events, "checkpoint")
    }
    assert_same_tensors(
        load_adapter(s3_server, spec.adapter_prefix, tmp_path / "restarted"),
        load_adapter(s3_server, reference_spec.adapter_prefix, tmp_path / "reference"),
    )


def test_worker_ranks_come_from_ray_trains_worker_group_log():
    logs = (
        "(TrainController pid=7) Started training worker group of size 2: \n"
        "(TrainController pid=7) - (ip=127.0.0.1, pid=11639) world_rank=0, local_rank=0, "
        "node_rank=0\n"
        "(TrainController pid=7) - (ip=127.0.0.1, pid=11696) world_rank=1, local_rank=1, "
        "node_rank=0\n"
    )
    assert worker_ranks(logs) == {11639: 0, 11696: 1}


# --- helpers -------------------------------------------------------------------------------


def wait_for_checkpoint(s3_server, job_id: str, timeout_s: float = 300) -> int:
    """Wait for the run's first ``checkpoint`` event; returns its step."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _, events = read_events(s3_server, job_id)
        if checkpoints := of_type(events, "checkpoint"):
            return int(checkpoints[0]["step"])
        time.sleep(0.05)
    raise TimeoutError(f"no checkpoint from {job_id} in {timeout_s}s")


def wait_for_worker_pid(ray_head, client, submission_id: str, rank: int,
                        timeout_s: float = 120) -> int:
    """``train_worker_pid`` once the run's worker group is up (before its first checkpoint:
    the kill then follows the checkpoint event without a state-API round trip)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            return train_worker_pid(ray_head, client, submission_id, rank)
        except ValueError:  # not started yet: no such rank among the live actors
            time.sleep(0.5)
    raise TimeoutError(f"no rank {rank} worker in {submission_id} in {timeout_s}s")


def train_worker_pid(ray_head, client, submission_id: str, rank: int) -> int:
    """The PID of the Ray Train worker of ``rank`` in the run of ``submission_id``.

    Ray's state API lists the live worker actors of this job only (the reference run is
    another Ray job); Ray Train's controller logs which of them holds which rank. The worker
    processes run on this host, the test head's only node.
    """
    from ray.util.state import list_actors

    actors = list_actors(
        address=ray_head.dashboard_url,
        filters=[
            ("class_name", "=", "RayTrainWorker"),
            ("job_id", "=", client.get_job_info(submission_id).job_id),
            ("state", "=", "ALIVE"),
        ],
        detail=True,
    )
    ranks = worker_ranks(client.get_job_logs(submission_id))
    [pid] = [a.pid for a in actors if ranks.get(a.pid) == rank]
    return pid


def split_at(events: list[dict], event: dict) -> tuple[list[dict], list[dict]]:
    at = events.index(event)
    return events[:at], events[at + 1 :]


def worker_ranks(logs: str) -> dict[int, int]:
    """``{pid: world_rank}`` from Ray Train's "Started training worker group" log lines."""
    return {int(pid): int(rank) for pid, rank in re.findall(r"pid=(\d+)\) world_rank=(\d+)", logs)}
