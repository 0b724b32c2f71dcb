"""``python -m service.base_models register --id ID FOLDER``: upload a Hugging Face folder to
the bucket as base model ``ID``, for every node to fetch (the bucket as the API's
``OPENFT_S3_*`` settings name it).

Then list ``ID`` in ``OPENFT_BASE_MODELS`` (without ``volume_path``) so that the API offers it
and serving deploys it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from service.base_models.service import DEFAULT_PART_SIZE, NotAModelFolder, register
from service.settings import Settings
from service.storage import BlobStore


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.base_models")
    commands = parser.add_subparsers(dest="command", required=True)
    reg = commands.add_parser("register", help="upload a Hugging Face folder to the bucket")
    reg.add_argument("--id", required=True, help="the model id users will name")
    reg.add_argument("folder", type=Path)
    reg.add_argument("--part-size-mib", type=int, default=DEFAULT_PART_SIZE >> 20,
                     help="multipart part size (MiB)")
    args = parser.parse_args(argv)

    settings = Settings()
    blobs = BlobStore.from_settings(settings)
    target = f"s3://{settings.s3_bucket}/base/{args.id}/ at {settings.resolved_s3_endpoint_url}"
    try:
        done = register(blobs, args.id, args.folder.expanduser().resolve(),
                        part_size=args.part_size_mib << 20)
    except (NotAModelFolder, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (BotoCoreError, ClientError) as e:
        print(f"error: cannot write to {target}: {e}", file=sys.stderr)
        return 1
    size = f"{len(done.manifest.files)} files, {done.manifest.total_bytes / 2**20:.1f} MiB"
    if done.unchanged:
        print(f"{args.id}: already registered ({size}) in {target}; nothing uploaded")
    else:
        print(f"{args.id}: registered ({size}) in {target}: uploaded {len(done.uploaded)}, "
              f"kept {len(done.kept)}, removed {len(done.removed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
