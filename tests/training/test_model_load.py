"""The base model as training workers get it: built partitioned under ZeRO-3, exported in
bounded shards (uploaded multipart), and fetched from the bucket into the node's cache when
it is registered there.

The slow tests: real Ray Train with two gloo workers on the session's Ray head, DeepSpeed
ZeRO-3, the tiny Llama of ``devstack/tiny_model.py``, SeaweedFS.
"""

from __future__ import annotations

import doctest
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import training.adapter
import training.driver
import training.model_load
from service.base_models.service import register
from tests.training.runs import (
    PAIRS,
    chat_line,
    make_spec,
    of_type,
    read_events,
    start,
    upload_file,
    wait,
)
from training import storage
from training.adapter import ShardWriter

WORLD = 2
SHARD_BYTES = 100_000
"""Small enough that the tiny Llama's export takes several shards."""

WORKERS = textwrap.dedent('''
    """Two Ray Train workers: build the model under ZeRO-3, note what each rank holds, train
    one step, then export it in shards (rank 0 also saves the gathered weights to compare)."""
    import json
    import sys
    from pathlib import Path

    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    def work(config):
        import deepspeed
        import torch

        from contract.spec import TrainingSpec
        from training.adapter import export_full_model
        from training.deepspeed_private import partition_numel, skip_shm_comm_op
        from training.model_load import load_base_model

        torch.set_num_threads(1)
        context = ray.train.get_context()
        rank, world = context.get_world_rank(), context.get_world_size()
        spec = TrainingSpec.model_validate(config["spec"])
        ds_config = {
            "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
            "train_batch_size": world, "zero_optimization": {"stage": 3},
            "zero_allow_untested_optimizer": True, "bf16": {"enabled": False},
            "steps_per_print": 10**9,
        }
        model = load_base_model(spec, ds_config, torch.float32)
        held = {name: [*partition_numel(p), p.numel()] for name, p in model.named_parameters()}
        skip_shm_comm_op()
        engine, *_ = deepspeed.initialize(
            model=model, config=ds_config,
            optimizer=torch.optim.AdamW(model.parameters(), lr=1e-2))
        torch.manual_seed(rank)
        ids = torch.randint(3, 200, (1, 24))
        engine.backward(engine(input_ids=ids, labels=ids).loss)
        engine.step()

        out = Path(config["out"])
        with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
            if rank == 0:
                torch.save({k: v.clone() for k, v in engine.module.state_dict().items()},
                           out / "trained.pt")
        (out / "model").mkdir(exist_ok=True)
        export_full_model(engine.module, out / "model", rank, True, config["shard_bytes"])
        (out / f"held-{rank}.json").write_text(json.dumps({"world": world, "held": held}))

    if __name__ == "__main__":
        address, spec, out, shard_bytes = sys.argv[1:]
        ray.init(address=address, logging_level="ERROR")
        TorchTrainer(
            work,
            train_loop_config={"spec": json.loads(spec), "out": out,
                               "shard_bytes": int(shard_bytes)},
            scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
            torch_config=TorchConfig(backend="gloo"),
            run_config=RunConfig(name="partitioned", storage_path=str(Path(out) / "ray")),
        ).fit()
''')


@pytest.mark.parametrize("module", [training.adapter, training.driver, training.model_load])
def test_docstring_examples_hold(module):
    assert doctest.testmod(module).failed == 0


def test_shards_stay_under_the_bound_and_the_index_names_every_tensor(tmp_path):
    import torch
    from safetensors.torch import load_file

    tensors = {f"layer.{i}.weight": torch.full((100,), float(i)) for i in range(5)}  # 400 B
    tensors["big.weight"] = torch.ones(300)  # 1200 B: more than a shard, a file of its own
    writer = ShardWriter(tmp_path, max_bytes=900)
    for name, tensor in tensors.items():
        writer.add(name, tensor)
    files = writer.close()

    assert [f.name for f in files] == [f"model-0000{i}-of-00004.safetensors" for i in (1, 2, 3, 4)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f.name for f in files] + ["model.safetensors.index.json"])
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 5 * 400 + 1200
    assert set(index["weight_map"]) == set(tensors)
    for file in files:
        loaded = load_file(file)
        assert sum(t.numel() * 4 for t in loaded.values()) <= 900 or len(loaded) == 1
        for name, tensor in loaded.items():
            assert index["weight_map"][name] == file.name
            assert torch.equal(tensor, tensors[name])


def test_one_shard_is_a_plain_model_safetensors_without_index(tmp_path):
    import torch

    writer = ShardWriter(tmp_path, max_bytes=10**6)
    writer.add("w", torch.zeros(3))
    assert [f.name for f in writer.close()] == ["model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_large_files_go_up_in_parts(s3_server, tmp_path):
    """S3 refuses a single PUT over 5 GB: a file above the threshold is a multipart upload."""
    big = tmp_path / "model-00001-of-00002.safetensors"
    big.write_bytes(os.urandom(11 * 1024**2))
    small = tmp_path / "config.json"
    small.write_text("{}")
    s3 = s3_server.client()

    keys = storage.upload_files(s3, s3_server.bucket, "uploads/", [big, small],
                                part_size=5 * 1024**2)

    assert keys == [f"uploads/{big.name}", "uploads/config.json"]
    etag = s3.head_object(Bucket=s3_server.bucket, Key=keys[0])["ETag"].strip('"')
    assert etag.endswith("-3"), etag  # S3's multipart ETag: "<hash>-<number of parts>"
    assert storage.read_bytes(s3, s3_server.bucket, keys[0]) == big.read_bytes()
    assert "-" not in s3.head_object(Bucket=s3_server.bucket, Key=keys[1])["ETag"]


@pytest.fixture(scope="module")
def partitioned_run(s3_server, ray_head, tiny_model_dir, tmp_path_factory):
    """The folder the workers wrote: each rank's view of the model right after it was built,
    the weights after one step, and the model as exported."""
    out = tmp_path_factory.mktemp("partitioned")
    script = out / "workers.py"
    script.write_text(WORKERS)
    spec = make_spec(s3_server, tiny_model_dir, "files/unused", zero_stage=3,
                     full_finetune=True, num_workers=WORLD)
    result = subprocess.run(
        [sys.executable, str(script), ray_head.gcs_address, spec.model_dump_json(), str(out),
         str(SHARD_BYTES)],
        env={**os.environ, **s3_server.env, "PYTHONUNBUFFERED": "1"},
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    return out


@pytest.mark.slow
def test_zero3_builds_the_model_partitioned_on_every_rank(partitioned_run, tiny_model_dir):
    """Right after ``from_pretrained``, before DeepSpeed's engine: no rank ever held the
    whole model, so a base larger than one worker's memory loads."""
    from safetensors.torch import load_file

    full = {name: t.numel() for name, t in load_file(tiny_model_dir / "model.safetensors").items()}
    for rank in range(WORLD):
        view = json.loads((partitioned_run / f"held-{rank}.json").read_text())
        assert view["world"] == WORLD
        held = view["held"]
        assert held.keys() == full.keys()
        for name, (local, whole, data) in held.items():
            assert whole == full[name], name
            assert local == -(-whole // WORLD), (name, local, whole)  # its share, rounded up
            assert data == 0, name  # the parameter itself holds nothing until gathered
        print(f"rank {rank} holds {sum(v[0] for v in held.values())} of "
              f"{sum(full.values())} elements")


@pytest.mark.slow
def test_full_model_export_is_sharded_and_loads_with_the_trained_weights(partitioned_run,
                                                                         tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    folder = partitioned_run / "model"
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 3, shards
    assert shards == sorted(p.name for p in folder.glob("model-*-of-*.safetensors"))
    tensors_of = {s: [k for k, v in index["weight_map"].items() if v == s] for s in shards}
    for shard, tensors in tensors_of.items():  # bounded, but a larger tensor has its own file
        assert len(tensors) == 1 or (folder / shard).stat().st_size <= SHARD_BYTES + 4096, shard
    assert not list(folder.glob(".shard-*")) and not (folder / "model.safetensors").exists()

    tuned = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).state_dict()
    trained = torch.load(partitioned_run / "trained.pt")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).state_dict()
    assert tuned.keys() == trained.keys()
    assert all(torch.equal(tuned[k], trained[k]) for k in trained), [
        k for k in trained if not torch.equal(tuned[k], trained[k])]
    assert any(not torch.equal(tuned[k], base[k]) for k in base)  # the step moved them
    assert set(index["weight_map"]) == set(base)


@pytest.mark.slow
def test_a_bucket_registered_base_model_is_fetched_into_the_node_cache_and_trains(
    s3_server, ray_head, tiny_model_dir, tmp_path
):
    base_id = "tiny-llama-registered"
    register(s3_server.blobs(), base_id, tiny_model_dir)
    spec = make_spec(s3_server, tiny_model_dir, upload_file(
        s3_server, [chat_line(c, city) for c, city in PAIRS]),
        base_model_path=None, base_model_id=base_id, zero_stage=3, n_epochs=2)
    cache = tmp_path / "node-cache"

    # The node's own setting in a real cluster; here the job's, so the test has its own.
    status, logs = wait(*start(ray_head, s3_server, spec,
                               env={"OPENFT_MODEL_CACHE_DIR": str(cache)}))

    assert status == "SUCCEEDED", logs[-5000:]
    _, events = read_events(s3_server, spec.job_id)
    losses = [m["train_loss"] for m in of_type(events, "metrics")]
    assert len(losses) == 6 and sum(losses[-3:]) < sum(losses[:3]), losses
    assert events[-1]["type"] == "result"
    fetched = cache / base_id
    for source in tiny_model_dir.iterdir():
        assert digest(fetched / source.name) == digest(source), source.name


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
