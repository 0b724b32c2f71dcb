"""Random-init LoRA adapters for a base model, put in S3 where serving looks for them.

Tests use them to see hot-loading change an answer; ``bench.serving`` to load a replica
with many adapters. ``lora_B`` is random, not peft's zeros, so an adapter visibly changes
the model's greedy output.
"""

from __future__ import annotations

from pathlib import Path

from contract.bucket import ADAPTER_FILES, adapter_prefix


def build_lora_adapter(base_dir: Path, out_dir: Path, rank: int = 8, seed: int = 1) -> Path:
    """Save a peft LoRA (rank ``rank``, all linear layers) with random non-zero ``lora_B``.

    peft initialises ``lora_B`` to zeros, which would make the adapter a no-op; random values
    make greedy output differ from the base model's.
    """
    # torch, peft and transformers only to build one: upload_adapter runs without them.
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = get_peft_model(
        model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear")
    )
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn_like(param) * 0.5)
    peft_model.save_pretrained(out_dir, safe_serialization=True)
    return Path(out_dir)


def upload_adapter(s3_client, bucket: str, adapter_dir: Path, model_key: str) -> None:
    """Put the adapter's two files where serving finds ``<base>:<model_key>``."""
    for name in ADAPTER_FILES:
        s3_client.upload_file(str(Path(adapter_dir) / name), bucket,
                              adapter_prefix(model_key) + name)
