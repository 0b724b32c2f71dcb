"""The base model's folder, found by each replica on its own node.

The deploy driver may run anywhere (a laptop, a Kubernetes job), so the ``LLMConfig`` it
builds names where a base model comes from, not a local path: a shared volume's folder as it
is, or ``s3://<bucket>/base/<id>`` for a model registered in the bucket
(``ServingConfig.base_model_source``). Ray Serve LLM only stores that source until the
engine starts, and would itself read an ``s3://`` source as a mirror to download with its own
code, unverified and into a folder of its choosing. The replica (``serving.server``) therefore
fetches a registered model into its node's cache (``contract.model_cache``: once per node,
checked against the manifest) before the engine starts, and points the config at that
folder; the engine's placement group is packed on the replica's node, so every rank reads it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

# Replicas log through Ray Serve's logger (the replica's log file).
logger = logging.getLogger("ray.serve")

Fetch = Callable[[str, str], Path]
"""``fetch(bucket, base_id)``: the local folder of a model registered in ``bucket``."""


def model_folder(source: str, base_id: str, fetch: Fetch) -> str:
    """The local folder for a model whose source is ``source``.

    >>> model_folder("/models/m", "m", fetch=lambda bucket, base_id: Path("/never"))
    '/models/m'
    >>> model_folder("s3://b/base/m", "m", fetch=lambda bucket, id_: Path("/c", bucket, id_))
    '/c/b/m'
    """
    if not source.startswith("s3://"):
        return source
    return str(fetch(urlparse(source).netloc, base_id))


def fetch_into_node_cache(bucket: str, base_id: str) -> Path:
    """``contract.model_cache.ensure_local`` into this node's cache
    (``OPENFT_MODEL_CACHE_DIR``), with S3 endpoint and keys from the node's ``AWS_*`` env."""
    import boto3

    from contract.model_cache import ensure_local

    s3 = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL"))
    return ensure_local(s3, bucket, base_id)


def use_local_folder(llm_config: Any, fetch: Fetch = fetch_into_node_cache) -> str:
    """Point ``llm_config`` (Ray's ``LLMConfig``) at the base model's folder on this node, in
    place; return the folder.

    Both places Ray reads the source change: ``model_loading_config.model_source`` and the
    engine config the driver already derived from it (``ray_llm_private.use_model_folder``).
    """
    # Ray's internals (and through them vLLM) only once a replica uses it: model_folder, the
    # rule, runs without them.
    from serving.ray_llm_private import use_model_folder

    source = llm_config.model_loading_config.model_source
    folder = model_folder(str(source), llm_config.model_id, fetch)
    llm_config.model_loading_config.model_source = folder
    use_model_folder(llm_config, folder)
    logger.info("base model %s: loading %s (from %s)", llm_config.model_id, folder, source)
    return folder
