"""The Kubernetes and KubeRay rules the process-level chart test relies on
(tests/support/kube.py): if these drift, that test runs pods other than the chart's."""

from __future__ import annotations

import doctest

import pytest

import tests.support.kube as kube


def test_doc_examples() -> None:
    assert doctest.testmod(kube).failed == 0


def test_a_missing_secret_key_fails_as_the_pod_would() -> None:
    container = {"name": "api", "env": [
        {"name": "OPENFT_DATABASE_URL",
         "valueFrom": {"secretKeyRef": {"name": "db", "key": "database-url"}}}]}
    with pytest.raises(KeyError, match="database-url"):
        kube.container_env(container, {"db": {"url": "postgresql://x"}})


def test_remap_leaves_longer_ports_and_other_hosts_alone() -> None:
    endpoints = {"head-svc:80": "127.0.0.1:5000"}
    assert kube.remap("http://head-svc:8000 http://head-svc:80/v1", endpoints) == \
        "http://head-svc:8000 http://127.0.0.1:5000/v1"
