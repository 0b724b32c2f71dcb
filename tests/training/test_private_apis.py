"""The private Ray Train and DeepSpeed internals training relies on are still where its
adapter modules (``training/ray_train_private.py``, ``training/deepspeed_private.py``)
expect them. After an upgrade these fail first, naming the version the adapter was written
for, rather than a run hanging or a restart losing its checkpoint."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from types import ModuleType

import deepspeed
import ray

import contract.bucket
import training.deepspeed_private
import training.ray_train_private

Check = Callable[[bool, str], None]


def checker(adapter: ModuleType, library: str, installed: str) -> Check:
    def check(ok: bool, what: str) -> None:
        assert ok, (f"{what}: {adapter.__name__} was written for {library} "
                    f"{adapter.WRITTEN_FOR}, and {library} {installed} is installed; "
                    "adapt that module (and this test) to it")

    return check


def module(check: Check, name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as e:
        check(False, f"no module {name} ({e})")
        raise


def test_ray_train_internals_are_where_ray_train_private_expects_them():
    check = checker(training.ray_train_private, "ray", ray.__version__)

    context = module(check, "ray.train.v2._internal.execution.context")
    check(hasattr(context, "get_train_context"), f"no get_train_context in {context.__name__}")
    check(hasattr(context.TrainContext, "get_result_queue"),
          "TrainContext has no get_result_queue()")
    check("Queue" in str(inspect.get_annotations(context.ExecutionContext).get("result_queue")),
          "ExecutionContext.result_queue is no queue.Queue, whose join() the adapter waits on")
    worker = module(check, "ray.train.v2._internal.execution.worker_group.worker")
    check("result_queue.task_done()" in inspect.getsource(worker),
          "a worker no longer marks a report done (task_done) when the controller takes it")
    constants = module(check, "ray.train.v2._internal.constants")
    check(getattr(constants, "CHECKPOINT_MANAGER_SNAPSHOT_FILENAME", None)
          == contract.bucket.RAY_TRAIN_SNAPSHOT,
          "Ray Train's checkpoint snapshot file is no longer contract.bucket.RAY_TRAIN_SNAPSHOT")


def test_deepspeed_internals_are_where_deepspeed_private_expects_them():
    check = checker(training.deepspeed_private, "deepspeed", deepspeed.__version__)

    builders = module(check, "deepspeed.ops.op_builder.cpu")
    builder = getattr(builders, "ShareMemCommBuilder", None)
    check(builder is not None, f"no ShareMemCommBuilder in {builders.__name__}")
    check(builder.NAME == training.deepspeed_private.SHM_COMM_OP,
          f"the shm op is named {builder.NAME!r} now")
    comm = module(check, "deepspeed.comm.torch")
    check(hasattr(comm, "build_shm_op")
          and "__compatible_ops__.get(builder.NAME" in inspect.getsource(comm.build_shm_op),
          "deepspeed.comm.torch.build_shm_op no longer asks deepspeed.ops.__compatible_ops__")
    # Reading the registry probes every op (compiler checks): its definition is checked instead.
    ops = module(check, "deepspeed.ops")
    check("__compatible_ops__" in inspect.getsource(ops),
          "deepspeed.ops has no __compatible_ops__ registry")
    partitioning = module(check, "deepspeed.runtime.zero.partition_parameters")
    convert = inspect.getsource(partitioning.Init._convert_to_deepspeed_param)
    check("param.ds_numel = param.numel()" in convert and "param.ds_tensor" in convert,
          "a ZeRO-3 parameter no longer carries ds_numel and ds_tensor (partition_numel)")


def test_torch_cpu_probes_are_where_torch_private_expects_them():
    import torch

    import training.torch_private

    check = checker(training.torch_private, "torch", torch.__version__)
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        probe = getattr(torch.cpu, name, None)
        check(callable(probe), f"no torch.cpu.{name}")
        check(isinstance(probe(), bool), f"torch.cpu.{name}() no longer answers a bool")
    check(isinstance(training.torch_private.cpu_has_bf16(), bool), "cpu_has_bf16 broke")


def test_only_torch_private_reads_torch_cpu_internals():
    import ast
    from pathlib import Path

    for path in Path(training.deepspeed_private.__file__).parent.glob("*.py"):
        if path.name == "torch_private.py":
            continue
        uses = {ast.unparse(node) for node in ast.walk(ast.parse(path.read_text()))
                if isinstance(node, ast.Attribute) and node.attr.startswith("_")
                and ast.unparse(node.value) == "torch.cpu"}
        assert not uses, f"training/{path.name} uses {uses}: go through training.torch_private"
