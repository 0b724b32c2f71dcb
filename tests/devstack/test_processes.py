"""Process supervision helpers: ports that never collide, GPUs counted as nvidia-smi lists them."""

from __future__ import annotations

import doctest
import json
import os
import sys

import pytest

import devstack.processes
from devstack.processes import free_ports, gpu_count, ready_or_stopped, start


def test_the_module_examples_hold():
    assert doctest.testmod(devstack.processes).failed == 0


def test_ports_asked_together_are_distinct_and_avoid_those_taken():
    """A Ray head given one port for two listeners refuses to start; one at a time, the OS
    may hand the same port out twice (a CI run lost every Ray test to it once)."""
    for _ in range(20):
        taken = set(free_ports(3))
        ports = free_ports(12, avoid=taken)
        assert len(set(ports)) == 12
        assert not taken & set(ports)


def test_gpus_are_counted_from_nvidia_smi():
    """``make run`` declares to Ray the GPUs ``nvidia-smi -L`` lists."""
    assert gpu_count("") == 0
    assert gpu_count("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1)\n") == 1


def test_a_server_that_never_gets_ready_is_stopped_not_left_behind(tmp_path):
    """The caller of a failed start has no process to stop: the starter stops it."""
    proc = start("never-ready", [sys.executable, "-c", "import time; time.sleep(600)"],
                 tmp_path, dict(os.environ))
    with pytest.raises(TimeoutError, match="never"):
        ready_or_stopped(proc, lambda: False, "never", timeout=1)
    assert not proc.alive()


def test_seaweedfs_is_ready_only_once_its_bucket_answers(tmp_path):
    """``weed mini`` answers on its port before its ``-bucket`` exists; a caller let in then
    got a 404 for the bucket (a CI run lost a test to it). Checked at once, on a fresh one."""
    import boto3

    from devstack.processes import free_port, start_seaweedfs

    port = free_port()
    proc = start_seaweedfs(tmp_path / "data", port, "fresh", "k", "s", tmp_path)
    try:
        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                          aws_access_key_id="k", aws_secret_access_key="s")
        s3.head_bucket(Bucket="fresh")
        s3.put_object(Bucket="fresh", Key="a", Body=b"x")
        assert s3.get_object(Bucket="fresh", Key="a")["Body"].read() == b"x"
    finally:
        proc.stop()


def test_a_ray_head_is_ready_only_once_its_node_is_alive():
    """The dashboard answers before the head's raylet registers, and a raylet that never does
    (its GCS overloaded: seen with a stack started beside a training run) leaves a cluster that
    answers HTTP and runs nothing. The start waits for the node, as the state API lists it."""
    import http.server
    import threading

    from devstack.processes import ray_node_alive

    nodes: list[dict] = []
    token: list[str] = []

    class Dashboard(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if token and self.headers.get("Authorization") != f"Bearer {token[0]}":
                self.send_error(401)
                return
            if not self.path.startswith("/api/v0/nodes?") or "filter_values=ALIVE" not in self.path:
                self.send_error(404)
                return
            body = json.dumps({"data": {"result": {"result": nodes}}}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Dashboard)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        assert not ray_node_alive(url)  # the dashboard is up, no node yet
        nodes.append({"node_id": "n1", "state": "ALIVE"})
        assert ray_node_alive(url)
        # a head with token auth (RAY_AUTH_MODE=token): asked with its token
        token.append("t0k3n")
        nodes.clear()
        assert not ray_node_alive(url, token="t0k3n")
        nodes.append({"node_id": "n1", "state": "ALIVE"})
        assert ray_node_alive(url, token="t0k3n")
        # refused (a token Ray read from its own file): it answers, which is all one can see
        assert ray_node_alive(url)
    finally:
        server.shutdown()
        server.server_close()
    assert not ray_node_alive(url)  # nothing answers
