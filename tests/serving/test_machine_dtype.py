"""A replica gives vLLM the dtype its machine runs fastest for ``dtype: auto``
(``vllm_cpu.dtype``: float32 on a CPU without bf16 units)."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.app import llm_config
from serving.config import ServingConfig
from vllm_cpu.dtype import cpu_has_bf16_units

MINIMAL = {"base_models": [{"id": "tiny"}], "s3_bucket": "b"}


def _tiny_bf16_checkpoint(folder: Path) -> Path:
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1, vocab_size=128,
                torch_dtype="bfloat16").save_pretrained(folder)
    return folder


@pytest.mark.parametrize("configured", [None, "bfloat16"])
def test_replica_gives_vllm_the_machine_dtype(configured: str | None, tmp_path: Path) -> None:
    """What the replica passes on is what vLLM's engine runs: fp32 for a bf16 checkpoint on
    this machine when its CPU has no bf16 units and the config says ``auto`` (the default);
    vLLM's own ``auto`` would be bf16 there. An explicit dtype reaches vLLM unchanged."""
    import torch
    from vllm.config import ModelConfig

    from serving.server import use_machine_dtype

    settings = MINIMAL | ({"dtype": configured} if configured else {})
    config = ServingConfig.model_validate(settings)
    llm = llm_config(config, config.base_models[0], "cpu")
    llm.get_engine_config()  # Ray caches it on the LLMConfig as the deployment is built
    use_machine_dtype(llm)

    checkpoint = _tiny_bf16_checkpoint(tmp_path / "model")
    if configured is None and not cpu_has_bf16_units():
        expected = torch.float32
    else:
        expected = torch.bfloat16
    for kwargs in (llm.engine_kwargs, llm.get_engine_config().engine_kwargs):
        model = ModelConfig(model=str(checkpoint), dtype=kwargs["dtype"], skip_tokenizer_init=True)
        assert model.dtype == expected
    assert ModelConfig(model=str(checkpoint), dtype="auto",
                       skip_tokenizer_init=True).dtype == torch.bfloat16
