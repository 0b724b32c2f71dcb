"""The one place training touches DeepSpeed's private internals (written for deepspeed 0.19.8).

DeepSpeed's CPU comm backend builds its shared-memory op (``ShareMemCommBuilder``) only when
its entry in the op registry ``deepspeed.ops.__compatible_ops__`` is true
(``deepspeed.comm.torch.build_shm_op``); :func:`skip_shm_comm_op` marks it false. Why training
never wants that op: see :func:`training.loop.initialize_deepspeed`.
Under ZeRO-3 each parameter carries its full size (``ds_numel``) and this rank's partition
(``ds_tensor``), attributes ``deepspeed.zero.Init`` adds; :func:`partition_numel` reads them.
``tests/training/test_private_apis.py`` fails, naming the version this was written for, when
an upgrade moves what it relies on.
"""

from __future__ import annotations

from typing import Any

import deepspeed.ops

WRITTEN_FOR = "0.19.8"
"""The deepspeed version whose internals this module was written against."""

SHM_COMM_OP = "deepspeed_shm_comm"
"""DeepSpeed's shared-memory all-reduce op for CPU (``ShareMemCommBuilder.NAME``); also the
name of its build folder (and lock file) under the torch extensions folder."""


def skip_shm_comm_op() -> None:
    """Mark the shm op incompatible, so that DeepSpeed neither builds nor loads it.

    Reading the registry the first time probes every op (a few compiler checks); the dict is
    then cached in the module, so the edit holds for the ``deepspeed.initialize`` that follows.
    """
    deepspeed.ops.__compatible_ops__[SHM_COMM_OP] = False


def partition_numel(param: Any) -> tuple[int, int]:
    """``(elements this rank holds, elements of the whole parameter)`` of a ZeRO-3 parameter.

    What shows that a model was built partitioned: the local partition is about
    ``1 / world_size`` of the whole, and the parameter's own data is empty.
    """
    return param.ds_tensor.numel(), param.ds_numel
