"""Moved to :mod:`devstack.tiny_model` (benches build it too); kept while imports move."""

from devstack.tiny_model import build_tiny_llama, build_tokenizer  # noqa: F401
