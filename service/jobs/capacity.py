"""What a job needs of the Ray cluster and whether the cluster has it: pure functions.

The scheduler reads the cluster over HTTP (:meth:`service.context.RayRuns.cluster`) as
:class:`ClusterNode` s; this module turns them, and a job's model and knobs, into answers:

- **where a worker runs**: on GPUs whenever the cluster has them (one GPU per worker,
  ``training_cpus_per_worker`` CPUs beside it), else on CPUs (:func:`uses_gpu`);
- **how many workers fit**: per alive node, ``floor(free CPUs / CPUs per worker)``, and on a
  GPU cluster no more than its free GPUs, summed over nodes (:func:`worker_slots`). Ray's
  *available* resources already exclude what serving's replicas and running runs hold;
- **how much memory a worker has**: on GPU the memory of one GPU (:data:`GPU_MEMORY_GIB` by
  the accelerator type Ray reports, or ``training_gpu_memory_gib``); on CPU a worker's share
  of its node's memory (the node's memory times CPUs per worker over the node's CPUs), the
  smallest over the nodes a worker may land on (:func:`memory_per_worker`);
- **how much memory a worker needs** (:func:`worker_memory`), the rule the ``auto`` ZeRO stage
  and gradient checkpointing follow (:func:`memory_plan`):

  * parameters ``P`` estimated from ``config.json`` (:class:`ModelFacts`): embeddings
    ``vocab x hidden`` (twice unless tied) plus per layer the attention projections
    (``2 h^2 + 2 h kv``, ``kv`` the key/value width), the gated MLP (``3 h i``) and two norms;
  * weights take ``w`` bytes a parameter: 2 in bf16 (GPU), 4 in fp32 (CPU; a CPU with bf16
    runs in less, the estimate stays on the safe side);
  * every *trained* parameter adds its gradient (``w``) and Adam's state: 12 bytes in bf16
    (fp32 master copy, first and second moment), 8 in fp32 (the weight is its own master):
    16 bytes a trained parameter either way. A full fine-tune trains ``P``; LoRA trains
    ``r x (in + out)`` per adapted projection and keeps ``P`` frozen (weights only);
  * ZeRO-2 keeps every weight on every worker and splits gradients and optimizer states over
    the ``N`` workers; ZeRO-3 splits the weights too and gathers two layers at a time;
  * activations of one forward of ``T`` tokens (at most ``max(8192, max_seq_length)``: the
    training loop's token budget per micro-batch): ``T x hidden x layers x``
    :data:`ACTIVATION_FACTOR` ``x w / 2`` bytes (34 bytes per token, layer and hidden unit in
    16-bit: Korthikanti et al. 2022, with memory-efficient attention, which stores no
    ``seq x seq`` scores); with checkpointing only each layer's input (``T x hidden x w``
    per layer) plus one layer's activations while it is recomputed. Logits add nothing
    worth counting: the loss is computed in chunks;
  * a worker may fill :data:`USABLE_FRACTION` of its memory (allocator fragmentation, CUDA
    context, communication buffers).

  Stage 2 while the replicated weights, the split states and checkpointed activations fit,
  else stage 3; checkpointing on when the full activations would not fit beside the rest.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.hyperparameters import TOKENS_PER_FORWARD
from service.context import ClusterNode, Resources

GIB = 1 << 30

GPU_MEMORY_GIB: dict[str, float] = {
    "V100": 16, "P100": 16, "T4": 16, "P4": 8, "K80": 12, "A10G": 24, "L4": 24,
    "L40S": 48, "A100": 40, "A100-40G": 40, "A100-80G": 80, "H100": 80, "H200": 141,
    "H20": 96, "B200": 180, "B300": 288, "GB200": 186, "GB300": 288, "RTX-PRO-6000": 96,
}
"""Memory of one GPU by the accelerator type Ray reports (``ray.util.accelerators``); an
``A100`` Ray does not size is taken as the 40 GB one. ``training_gpu_memory_gib`` overrides."""

UNKNOWN_GPU_MEMORY_GIB = 24.0
"""What the rule assumes of a GPU whose type is not in the table and not configured: enough
for it to choose, too uncertain to refuse a job on."""

ACTIVATION_FACTOR = 34
"""Bytes of activations per token, layer and hidden unit in 16-bit, kept for backward."""

USABLE_FRACTION = 0.85
"""Share of a worker's memory the estimate may fill."""

GATHERED_LAYERS = 2
"""Layers ZeRO-3 holds whole at once: the one computing and the one prefetched."""


@dataclass(frozen=True)
class WorkerShape:
    """What one Ray Train worker asks Ray for."""

    cpus: float
    gpus: int
    """1 on a GPU cluster, else 0."""


def uses_gpu(nodes: Sequence[ClusterNode], forced: bool | None) -> bool:
    """Train on GPUs: as ``training_use_gpu`` forces, else whenever the cluster has any.

    >>> gpu = ClusterNode("a", Resources(8, 1, 0), Resources(8, 1, 0))
    >>> uses_gpu([gpu], None), uses_gpu([gpu], False), uses_gpu([], None)
    (True, False, False)
    """
    if forced is not None:
        return forced
    return any(n.total.gpus > 0 for n in nodes)


def node_slots(free: Resources, shape: WorkerShape) -> int:
    """Workers of ``shape`` that ``free`` holds.

    >>> node_slots(Resources(cpus=16, gpus=8), WorkerShape(cpus=1, gpus=1))
    8
    >>> node_slots(Resources(cpus=3.5), WorkerShape(cpus=1, gpus=0))
    3
    """
    slots = math.floor(free.cpus / shape.cpus + 1e-9) if shape.cpus > 0 else 1 << 30
    if shape.gpus:
        slots = min(slots, math.floor(free.gpus / shape.gpus + 1e-9))
    return max(0, slots)


def worker_slots(nodes: Iterable[ClusterNode], shape: WorkerShape,
                 free: bool = True) -> int:
    """Workers of ``shape`` the cluster holds: its free resources, or all of them."""
    return sum(node_slots(n.available if free else n.total, shape) for n in nodes)


def memory_per_worker(nodes: Sequence[ClusterNode], shape: WorkerShape,
                      gpu_memory_gib: float | None = None) -> float | None:
    """Bytes one worker may use; None when no node can hold a worker.

    >>> h100 = ClusterNode("a", Resources(16, 8, 1e12), Resources(16, 8, 1e12), "H100")
    >>> memory_per_worker([h100], WorkerShape(1, 1)) / GIB
    80.0
    >>> cpu = ClusterNode("b", Resources(4, 0, 16 * GIB), Resources(4, 0, 16 * GIB))
    >>> memory_per_worker([cpu], WorkerShape(2, 0)) / GIB
    8.0
    """
    hosts = [n for n in nodes if node_slots(n.total, shape) > 0]
    if not hosts:
        return None
    if shape.gpus:
        if gpu_memory_gib is not None:
            return gpu_memory_gib * GIB
        return min(GPU_MEMORY_GIB.get(n.accelerator_type or "", UNKNOWN_GPU_MEMORY_GIB)
                   for n in hosts) * GIB
    return min(n.total.memory * shape.cpus / n.total.cpus for n in hosts)


def gpu_memory_known(nodes: Sequence[ClusterNode], gpu_memory_gib: float | None) -> bool:
    """Whether :func:`memory_per_worker` measured the GPUs rather than assumed them: only a
    measured size may refuse a job."""
    return gpu_memory_gib is not None or all(
        (n.accelerator_type or "") in GPU_MEMORY_GIB for n in nodes if n.total.gpus > 0)


@dataclass(frozen=True)
class ModelFacts:
    """A decoder's shape, from its Hugging Face ``config.json``."""

    hidden: int
    layers: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    tied: bool
    context: int | None
    """``max_position_embeddings``: the longest sequence the model was built for."""

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelFacts:
        text = config.get("text_config") or config  # multimodal configs nest the decoder
        hidden = int(text["hidden_size"])
        heads = int(text.get("num_attention_heads") or 1)
        return cls(
            hidden=hidden, layers=int(text["num_hidden_layers"]),
            intermediate=int(text.get("intermediate_size") or 4 * hidden),
            vocab=int(text["vocab_size"]), heads=heads,
            kv_heads=int(text.get("num_key_value_heads") or heads),
            tied=bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
            context=text.get("max_position_embeddings"),
        )

    @classmethod
    def from_folder(cls, folder: Path) -> ModelFacts:
        return cls.from_config(json.loads((folder / "config.json").read_text()))

    @property
    def kv_width(self) -> int:
        return self.hidden // self.heads * self.kv_heads

    @property
    def layer_parameters(self) -> int:
        h, kv = self.hidden, self.kv_width
        return 2 * h * h + 2 * h * kv + 3 * h * self.intermediate + 2 * h

    @property
    def parameters(self) -> int:
        """Parameters ``P``.

        >>> llama_8b = ModelFacts(hidden=4096, layers=32, intermediate=14336, vocab=128256,
        ...                       heads=32, kv_heads=8, tied=False, context=131072)
        >>> round(llama_8b.parameters / 1e9, 2)
        8.03
        """
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return embeddings + self.layers * self.layer_parameters + self.hidden

    def lora_parameters(self, rank: int) -> int:
        """Trained parameters of a LoRA adapter on every linear layer but the LM head."""
        h, kv, i = self.hidden, self.kv_width, self.intermediate
        per_layer = (h + h) * 2 + (h + kv) * 2 + (h + i) * 3
        return rank * per_layer * self.layers


@dataclass(frozen=True)
class TrainingLoad:
    """What a run puts in a worker's memory besides the model's shape."""

    workers: int
    max_seq_length: int
    full_finetune: bool
    lora_r: int
    weight_bytes: int
    """2 on GPU (bf16), 4 on CPU (fp32, the safe side)."""
    sequences_per_worker_step: int = 0
    """Sequences one worker trains on per optimizer step (examples, twice that for DPO's
    pairs); 0 when unknown. A forward never holds more than these."""

    @property
    def tokens_per_forward(self) -> int:
        """Tokens of the largest forward: the token budget, or one sequence when a single one
        is longer; never more than the step's own sequences.

        >>> TrainingLoad(1, 64, False, 8, 4, sequences_per_worker_step=1).tokens_per_forward
        64
        >>> TrainingLoad(1, 1024, False, 8, 4, sequences_per_worker_step=32).tokens_per_forward
        8192
        >>> TrainingLoad(1, 16384, False, 8, 4).tokens_per_forward
        16384
        """
        budget = max(TOKENS_PER_FORWARD, self.max_seq_length)
        if self.sequences_per_worker_step <= 0:
            return budget
        return min(budget, max(self.max_seq_length,
                               self.sequences_per_worker_step * self.max_seq_length))


def worker_memory(model: ModelFacts, load: TrainingLoad, zero_stage: int,
                  checkpointing: bool) -> float:
    """Bytes one worker needs under the rule in the module docstring.

    >>> llama_8b = ModelFacts(hidden=4096, layers=32, intermediate=14336, vocab=128256,
    ...                       heads=32, kv_heads=8, tied=False, context=131072)
    >>> lora = TrainingLoad(workers=8, max_seq_length=4096, full_finetune=False, lora_r=16,
    ...                     weight_bytes=2)
    >>> round(worker_memory(llama_8b, lora, 2, checkpointing=False) / GIB, 1)  # 15 GiB weights
    49.1
    >>> round(worker_memory(llama_8b, lora, 2, checkpointing=True) / GIB, 1)
    18.2
    """
    w = load.weight_bytes
    trained = model.parameters if load.full_finetune else model.lora_parameters(load.lora_r)
    frozen = 0 if load.full_finetune else model.parameters
    state = (w + (12 if w == 2 else 8)) * trained  # gradient and Adam's states
    weights = (frozen + trained) * w
    if zero_stage == 3:
        static = (weights + state) / load.workers + GATHERED_LAYERS * model.layer_parameters * w
    else:
        static = weights + state / load.workers
    tokens = load.tokens_per_forward
    layer_activations = tokens * model.hidden * ACTIVATION_FACTOR * w / 2
    if checkpointing:
        activations = tokens * model.hidden * w * model.layers + layer_activations
    else:
        activations = layer_activations * model.layers
    return static + activations


@dataclass(frozen=True)
class MemoryPlan:
    zero_stage: int
    gradient_checkpointing: bool
    need: float
    """Bytes per worker under this plan."""
    have: float
    """Bytes per worker the estimate may fill."""

    @property
    def fits(self) -> bool:
        return self.need <= self.have


def memory_plan(model: ModelFacts, load: TrainingLoad, memory: float,
                zero_stage: int | None = None,
                checkpointing: bool | None = None) -> MemoryPlan:
    """The ZeRO stage and checkpointing a run uses: those given, the rule for the rest.

    >>> tiny = ModelFacts(hidden=128, layers=2, intermediate=256, vocab=512, heads=2,
    ...                   kv_heads=2, tied=True, context=1024)
    >>> load = TrainingLoad(2, 1024, False, 16, 4)
    >>> p = memory_plan(tiny, load, memory=4 * GIB)
    >>> (p.zero_stage, p.gradient_checkpointing, p.fits)
    (2, False, True)
    """
    have = memory * USABLE_FRACTION
    if zero_stage is None:
        zero_stage = 2 if worker_memory(model, load, 2, True) <= have else 3
    if checkpointing is None:
        checkpointing = worker_memory(model, load, zero_stage, False) > have
    return MemoryPlan(zero_stage, checkpointing,
                      worker_memory(model, load, zero_stage, checkpointing), have)


def describe(nbytes: float) -> str:
    """Bytes as people read them in an event.

    >>> describe(3.5 * GIB)
    '3.5 GiB'
    """
    return f"{nbytes / GIB:.1f} GiB"


@dataclass(frozen=True)
class ClusterView:
    """What the cluster offers training, as the scheduler read it once."""

    use_gpu: bool
    shape: WorkerShape
    worker_slots: int
    """Workers the cluster can hold for training: those free now plus those openft's own
    runs hold (they come back when the runs end); serving's share never does."""
    memory_per_worker: float | None
    """Bytes; None when no node can hold a worker."""
    memory_measured: bool
    """False when a GPU's size was assumed: the rule may use it, a refusal may not."""
    has_workers: bool = True
    """Some node could hold a worker. Without one (an autoscaling cluster at zero workers)
    nothing is refused or held back: Ray queues the run and the autoscaler adds nodes."""

    @property
    def weight_bytes(self) -> int:
        return 2 if self.use_gpu else 4

    @classmethod
    def of(cls, nodes: Sequence[ClusterNode], *, use_gpu: bool | None, cpus_per_worker: float,
           gpu_memory_gib: float | None = None, held_workers: int = 0) -> ClusterView:
        gpu = uses_gpu(nodes, use_gpu)
        shape = WorkerShape(cpus_per_worker, 1 if gpu else 0)
        return cls(gpu, shape, worker_slots(nodes, shape) + held_workers,
                   memory_per_worker(nodes, shape, gpu_memory_gib),
                   not gpu or gpu_memory_known(nodes, gpu_memory_gib),
                   worker_slots(nodes, shape, free=False) > 0)

    def describe_worker(self) -> str:
        """What one worker asks Ray for, in words.

        >>> ClusterView(True, WorkerShape(2, 1), 8, None, False).describe_worker()
        'one GPU and 2 CPUs'
        """
        cpus = f"{self.shape.cpus:g} CPU" + ("" if self.shape.cpus == 1 else "s")
        return f"one GPU and {cpus}" if self.use_gpu else cpus
