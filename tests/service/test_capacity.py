"""What a job needs of the cluster and whether it fits: the rule of service/jobs/capacity.py,
the refusals of ``check_limits`` it drives, and the cluster as Ray's dashboard reports it."""

from __future__ import annotations

import doctest
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import service.jobs.capacity
import service.jobs.ray_jobs
from devstack.processes import free_port, free_ports, start_ray_head, wait_until
from service.jobs.capacity import (
    GIB,
    ClusterView,
    ModelFacts,
    TrainingLoad,
    WorkerShape,
    memory_per_worker,
    memory_plan,
    uses_gpu,
    worker_slots,
)
from service.jobs.hyperparameters import Limits, OutOfLimits, check_limits
from service.jobs.ray_jobs import RayJobs, cluster_nodes
from tests.service.fake_ray import node

TINY = ModelFacts(hidden=128, layers=2, intermediate=256, vocab=512, heads=2, kv_heads=2,
                  tied=True, context=1024)
LLAMA_8B = ModelFacts(hidden=4096, layers=32, intermediate=14336, vocab=128256, heads=32,
                      kv_heads=8, tied=False, context=131072)
LLAMA_70B = ModelFacts(hidden=8192, layers=80, intermediate=28672, vocab=128256, heads=64,
                       kv_heads=8, tied=False, context=131072)
LIMITS = Limits(num_workers=8, max_workers=64, zero_stage=None, max_seq_length=131072,
                max_lora_rank=64)


def test_the_examples_in_the_docstrings_hold():
    assert doctest.testmod(service.jobs.capacity).failed == 0
    assert doctest.testmod(service.jobs.ray_jobs).failed == 0


def test_parameters_are_estimated_from_the_config():
    config = {"hidden_size": 8192, "num_hidden_layers": 80, "intermediate_size": 28672,
              "vocab_size": 128256, "num_attention_heads": 64, "num_key_value_heads": 8,
              "tie_word_embeddings": False, "max_position_embeddings": 131072}
    facts = ModelFacts.from_config(config)
    assert facts == LLAMA_70B
    assert round(facts.parameters / 1e9, 1) == 70.6  # Llama 3 70B: 70.6 B
    tied = ModelFacts.from_config({**config, "tie_word_embeddings": True})
    assert facts.parameters - tied.parameters == 128256 * 8192


@pytest.mark.parametrize("nodes, forced, expected", [
    ([node(cpus=16, gpus=8)], None, True),  # GPUs whenever the cluster has them
    ([node(cpus=16, gpus=8)], False, False),  # unless the operator forces CPU
    ([node(cpus=4)], None, False),
    ([node(cpus=0), node(cpus=8, gpus=1)], None, True),  # a head without GPUs counts none
])
def test_training_uses_gpus_when_the_cluster_has_them(nodes, forced, expected):
    assert uses_gpu(nodes, forced) is expected


@pytest.mark.parametrize("nodes, shape, free, expected", [
    ([node(cpus=16, gpus=8)], WorkerShape(1, 1), True, 8),
    ([node(cpus=16, gpus=8, free_gpus=3)], WorkerShape(1, 1), True, 3),
    ([node(cpus=16, gpus=8, free_gpus=3)], WorkerShape(1, 1), False, 8),
    ([node(cpus=4, gpus=8)], WorkerShape(1, 1), True, 4),  # CPUs bound too
    ([node(cpus=4, free_cpus=3.5)], WorkerShape(1, 0), True, 3),  # serving holds 0.5
    ([node(cpus=0), node(cpus=2), node(cpus=2)], WorkerShape(1, 0), True, 4),  # KubeRay head
    ([node(cpus=3), node(cpus=3)], WorkerShape(2, 0), True, 2),  # a worker on one node
])
def test_worker_slots_count_whole_workers_per_node(nodes, shape, free, expected):
    assert worker_slots(nodes, shape, free) == expected


@pytest.mark.parametrize("nodes, shape, setting, expected_gib", [
    ([node(cpus=16, gpus=8, accelerator="H100")], WorkerShape(1, 1), None, 80),
    ([node(cpus=16, gpus=8, accelerator="A100-80G")], WorkerShape(1, 1), None, 80),
    ([node(cpus=16, gpus=8, accelerator="H100")], WorkerShape(1, 1), 94, 94),  # setting wins
    ([node(cpus=8, gpus=1, accelerator="L4"), node(cpus=8, gpus=1, accelerator="H100")],
     WorkerShape(1, 1), None, 24),  # the smallest a worker may land on
    ([node(cpus=4, memory_gib=16)], WorkerShape(1, 0), None, 4),  # a quarter of the node
    ([node(cpus=0, memory_gib=100), node(cpus=2, memory_gib=8)], WorkerShape(1, 0), None, 4),
])
def test_memory_per_worker_is_one_gpu_or_a_share_of_the_node(nodes, shape, setting,
                                                            expected_gib):
    assert memory_per_worker(nodes, shape, setting) == expected_gib * GIB


def test_an_unknown_gpu_is_assumed_for_the_rule_but_refuses_nothing():
    view = ClusterView.of([node(cpus=8, gpus=1, accelerator="X1")], use_gpu=None,
                          cpus_per_worker=1)
    assert view.use_gpu and view.memory_per_worker == 24 * GIB and not view.memory_measured
    check_limits({"full_finetune": True}, LIMITS, LLAMA_70B, view)  # no refusal on a guess
    measured = ClusterView.of([node(cpus=8, gpus=1, accelerator="X1")], use_gpu=None,
                              cpus_per_worker=1, gpu_memory_gib=24)
    with pytest.raises(OutOfLimits):
        check_limits({"full_finetune": True}, LIMITS, LLAMA_70B, measured)


@pytest.mark.parametrize("model, full, workers, seq, gib, expected", [
    (TINY, False, 2, 1024, 4, (2, False)),
    (LLAMA_8B, False, 8, 4096, 80, (2, False)),  # LoRA: 15 GiB of bf16 weights + activations
    (LLAMA_8B, False, 1, 4096, 24, (2, True)),  # weights fit, 8k tokens' activations do not
    (LLAMA_8B, True, 8, 4096, 80, (2, False)),  # full: Adam's 12 bytes split over 8
    (LLAMA_8B, True, 2, 4096, 80, (3, True)),  # ... not over 2
    (LLAMA_70B, False, 8, 4096, 80, (3, True)),  # 131 GiB of frozen weights: split them
    (LLAMA_70B, True, 32, 8192, 80, (3, True)),
])
def test_the_zero_and_checkpointing_rule(model, full, workers, seq, gib, expected):
    plan = memory_plan(model, TrainingLoad(workers, seq, full, 16, 2), gib * GIB)
    assert (plan.zero_stage, plan.gradient_checkpointing) == expected
    assert plan.fits


def test_fp32_on_cpu_needs_more_than_bf16_on_gpu():
    bf16, fp32 = (memory_plan(LLAMA_8B, TrainingLoad(2, 1024, False, 16, w), 1 << 50)
                  for w in (2, 4))
    assert fp32.need > 1.9 * bf16.need


def h100s(n_nodes: int = 1, free_gpus: int | None = None, held: int = 0) -> ClusterView:
    """Nodes of 8 H100s; ``held`` workers belong to openft's own runs (they come back)."""
    nodes = [node(cpus=32, gpus=8, accelerator="H100", free_gpus=free_gpus, name=f"n{i}")
             for i in range(n_nodes)]
    return ClusterView.of(nodes, use_gpu=None, cpus_per_worker=2, held_workers=held)


@pytest.mark.parametrize("requested, model, cluster, param", [
    ({"num_workers": 16}, TINY, h100s(1), "num_workers"),  # 8 GPUs
    ({"num_workers": 8}, TINY, h100s(1, free_gpus=6), "num_workers"),  # serving holds 2
    ({}, TINY, ClusterView.of([node(cpus=0), node(cpus=2, free_cpus=0.5)], use_gpu=None,
                              cpus_per_worker=1), "num_workers"),  # serving holds 1.5 of 2
    ({"full_finetune": True}, LLAMA_70B, h100s(1), "full_finetune"),  # LoRA would fit
    ({"full_finetune": True, "zero_stage": 2}, LLAMA_70B, h100s(4), "zero_stage"),
    ({"zero_stage": 2}, LLAMA_70B, h100s(1), "zero_stage"),  # 131 GiB replicated
    ({"max_seq_length": 131072, "gradient_checkpointing": False}, LLAMA_8B, h100s(1),
     "gradient_checkpointing"),
    ({"max_seq_length": 131072}, LLAMA_70B, h100s(1), "max_seq_length"),
])
def test_a_job_that_can_never_fit_is_refused_naming_the_knob(requested, model, cluster, param):
    with pytest.raises(OutOfLimits) as e:
        check_limits(requested, LIMITS, model, cluster)
    assert e.value.param == param


def test_a_model_too_big_for_the_cluster_is_refused_naming_the_model():
    huge = ModelFacts(**{**LLAMA_70B.__dict__, "layers": 800})
    with pytest.raises(OutOfLimits) as e:
        check_limits({}, LIMITS, huge, h100s(1))
    assert e.value.param == "model" and "per worker" in str(e.value)


def test_what_fits_later_or_is_unknown_is_not_refused():
    check_limits({"num_workers": 8}, LIMITS, TINY, h100s(1, free_gpus=0, held=8))  # our runs
    check_limits({"full_finetune": True, "num_workers": 32}, LIMITS, LLAMA_70B, h100s(4))
    check_limits({"num_workers": 64, "full_finetune": True}, LIMITS, LLAMA_70B, None)  # no Ray
    check_limits({"full_finetune": True}, LIMITS, None, h100s(1))  # config unreadable
    no_workers_yet = ClusterView.of([node(cpus=0)], use_gpu=True, cpus_per_worker=1)
    check_limits({"num_workers": 8}, LIMITS, TINY, no_workers_yet)  # autoscaling from zero


def test_cluster_nodes_subtract_placed_bundles_and_free_standing_actors():
    nodes = [{"node_id": "a", "resources_total": {"CPU": 8.0, "GPU": 8.0, "memory": 1e11},
              "labels": {"ray.io/accelerator-type": "H100"}},
             {"node_id": "b", "resources_total": {"CPU": 2.0, "memory": 1e10}}]
    groups = [{"bundles": [{"node_id": "a", "unit_resources": {"CPU": 1.0, "GPU": 1.0}},
                           {"node_id": "a", "unit_resources": {"CPU": 1.0, "GPU": 1.0}}]}]
    actors = [{"node_id": "b", "placement_group_id": None, "required_resources": {"CPU": 0.5}},
              {"node_id": "a", "placement_group_id": "pg", "required_resources": {"GPU": 1}},
              {"node_id": "gone", "placement_group_id": None, "required_resources": {"CPU": 1}}]
    a, b = cluster_nodes(nodes, groups, actors)
    assert (a.available.cpus, a.available.gpus, a.accelerator_type) == (6.0, 6.0, "H100")
    assert (b.available.cpus, b.total.cpus, b.accelerator_type) == (1.5, 2.0, None)


def test_an_unreachable_dashboard_is_an_unknown_cluster():
    ray = RayJobs(f"http://127.0.0.1:{free_port()}", timeout=2)
    try:
        assert ray.cluster() is None
    finally:
        ray.close()


@pytest.fixture(scope="module")
def ray_head_dashboard() -> Iterator[tuple[str, str]]:
    with tempfile.TemporaryDirectory(prefix="cap", dir="/tmp") as tmp:
        gcs, dashboard = free_ports(2)
        head = start_ray_head(Path(tmp) / "ray", gcs, dashboard, 3, Path(tmp), num_gpus=0)
        try:
            yield f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dashboard}"
        finally:
            head.stop()


@pytest.mark.slow
def test_a_real_head_reports_its_cpus_and_what_a_placement_group_holds(ray_head_dashboard):
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    gcs, dashboard = ray_head_dashboard
    jobs = RayJobs(dashboard)
    try:
        wait_until(lambda: jobs.cluster() is not None, "the head listing itself", None, 60)
        [before] = jobs.cluster() or [None]
        assert before.total.cpus == before.available.cpus == 3 and before.total.memory > 0
        ray.init(address=gcs, _node_ip_address="127.0.0.1", log_to_driver=False)
        try:
            group = placement_group([{"CPU": 1}, {"CPU": 1}])
            ray.get(group.ready(), timeout=60)
            [held] = jobs.cluster() or [None]
            assert (held.total.cpus, held.available.cpus) == (3, 1)
            remove_placement_group(group)
        finally:
            ray.shutdown()
    finally:
        jobs.close()


SMOLLM2_135M = ModelFacts(hidden=576, layers=30, intermediate=1536, vocab=49152, heads=9,
                          kv_heads=3, tied=True, context=8192)


def test_checkpointing_is_left_off_when_the_steps_own_examples_are_short():
    """A forward holds no more than the step's sequences: twelve short rows at batch 1 (what
    `make run`'s README job is) need no recomputation; a step of 32 long rows does."""
    memory = 3.9 * GIB  # a 1-CPU worker's share of a 24 GiB, 4-CPU node, fp32
    short = TrainingLoad(1, 64, False, 8, 4, sequences_per_worker_step=1)
    long = TrainingLoad(1, 1024, False, 8, 4, sequences_per_worker_step=32)
    assert not memory_plan(SMOLLM2_135M, short, memory).gradient_checkpointing
    assert memory_plan(SMOLLM2_135M, long, memory).gradient_checkpointing
