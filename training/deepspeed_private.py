"""The one place training touches DeepSpeed's private internals (written for deepspeed 0.19.8).

DeepSpeed's CPU comm backend builds its shared-memory op (``ShareMemCommBuilder``) only when
its entry in the op registry ``deepspeed.ops.__compatible_ops__`` is true
(``deepspeed.comm.torch.build_shm_op``); :func:`skip_shm_comm_op` marks it false. Why training
never wants that op: see :func:`training.loop.initialize_deepspeed`.
``tests/training/test_private_apis.py`` fails, naming the version this was written for, when
an upgrade moves what it relies on.
"""

from __future__ import annotations

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
