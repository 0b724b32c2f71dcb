"""The per-node base model cache: one download per node however many ask, resumable, and
nothing that looks complete unless it matches the manifest."""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import threading
from pathlib import Path

import pytest

from contract.base_models import TOKENIZER_FILES, BaseModelManifest, ManifestFile
from contract.bucket import base_model_file_key, base_model_manifest_key
from contract.model_cache import BaseModelNotRegistered, CorruptDownload, ensure_local

BUCKET = "b"
PART = 1000  # bytes: small parts, so a few KiB make many of them


class NoSuchKey(Exception):
    """Shaped like botocore's ClientError for a missing key."""

    def __init__(self, key: str):
        super().__init__(key)
        self.response = {"Error": {"Code": "NoSuchKey"}}


class FakeS3:
    """An in-memory bucket that logs every ranged GET (one line per part fetched) to a file,
    so calls made in forked processes are counted too."""

    def __init__(self, log: Path, die_after: int | None = None):
        self.objects: dict[str, bytes] = {}
        self.log = log
        self.die_after = die_after
        self._calls = 0
        self._lock = threading.Lock()

    def get_object(self, *, Bucket: str, Key: str, Range: str | None = None) -> dict:
        assert Bucket == BUCKET
        if Key not in self.objects:
            raise NoSuchKey(Key)
        data = self.objects[Key]
        if Range is None:
            return {"Body": io.BytesIO(data)}
        with self._lock:
            self._calls += 1
            if self.die_after is not None and self._calls > self.die_after:
                os._exit(3)  # the process is killed in the middle of its download
        with self.log.open("a") as fh:
            fh.write(f"{Key} {Range}\n")
        start, end = (int(x) for x in Range.removeprefix("bytes=").split("-"))
        return {"Body": io.BytesIO(data[start:end + 1])}

    def fetched(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


def register(s3: FakeS3, base_id: str, files: dict[str, bytes]) -> BaseModelManifest:
    manifest = BaseModelManifest(id=base_id, files=[
        ManifestFile(name=n, size=len(b), sha256=hashlib.sha256(b).hexdigest())
        for n, b in files.items()])
    for name, body in files.items():
        s3.objects[base_model_file_key(base_id, name)] = body
    s3.objects[base_model_manifest_key(base_id)] = manifest.model_dump_json().encode()
    return manifest


MODEL = {
    "config.json": b'{"model_type": "llama"}',
    "tokenizer.json": b"{}" * 700,
    "model.safetensors": os.urandom(7 * PART + 123),
    "sub/extra.bin": b"",
}
PARTS = {"config.json": 1, "tokenizer.json": 2, "model.safetensors": 8, "sub/extra.bin": 0}


@pytest.fixture
def s3(tmp_path: Path) -> FakeS3:
    fake = FakeS3(tmp_path / "gets.log")
    register(fake, "m", MODEL)
    return fake


def fetch(s3: FakeS3, cache: Path, **kw) -> Path:
    return ensure_local(s3, BUCKET, "m", cache, part_size=PART, **kw)


def assert_complete(folder: Path, files: dict[str, bytes] = MODEL) -> None:
    for name, body in files.items():
        assert (folder / name).read_bytes() == body, name
        assert (folder / name).stat().st_mode & 0o444 == 0o444  # readable by other users
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert on_disk == set(files)


def test_threads_of_one_node_download_each_part_once(s3: FakeS3, tmp_path: Path):
    cache, folders, errors = tmp_path / "cache", [], []

    def worker():
        try:
            folders.append(fetch(s3, cache))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(folders)) == 1
    assert_complete(folders[0])
    gets = s3.fetched()
    assert len(gets) == sum(PARTS.values()) and len(set(gets)) == len(gets)


def _fetch_in_child(s3: FakeS3, cache: Path) -> None:
    fetch(s3, cache)


def test_processes_of_one_node_download_each_part_once(s3: FakeS3, tmp_path: Path):
    cache = tmp_path / "cache"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_fetch_in_child, args=(s3, cache)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert_complete(cache / "m")
    gets = s3.fetched()
    assert len(gets) == sum(PARTS.values()) and len(set(gets)) == len(gets)


def test_a_download_killed_half_way_resumes_with_the_parts_it_has(s3: FakeS3, tmp_path: Path):
    cache = tmp_path / "cache"
    s3.die_after = 6  # config (1), tokenizer (2), then 3 of the weights' 8 parts
    child = multiprocessing.get_context("fork").Process(
        target=lambda: ensure_local(s3, BUCKET, "m", cache, part_size=PART, workers=1))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 3
    assert not (cache / "m" / "model.safetensors").exists()  # nothing looks complete
    before = s3.fetched()

    s3.die_after = None
    assert_complete(fetch(s3, cache))
    after = s3.fetched()[len(before):]
    assert len(after) == PARTS["model.safetensors"] - 3
    assert not set(after) & set(before)


def test_bytes_that_do_not_match_the_manifest_are_refused(s3: FakeS3, tmp_path: Path):
    manifest = BaseModelManifest.model_validate_json(s3.objects[base_model_manifest_key("m")])
    good = s3.objects[base_model_file_key("m", "model.safetensors")]
    bad = bytes([good[0] ^ 1]) + good[1:]
    s3.objects[base_model_file_key("m", "model.safetensors")] = bad
    cache = tmp_path / "cache"

    with pytest.raises(CorruptDownload) as err:
        fetch(s3, cache)
    expected = next(f.sha256 for f in manifest.files if f.name == "model.safetensors")
    assert "model.safetensors" in str(err.value) and expected in str(err.value)
    assert hashlib.sha256(bad).hexdigest() in str(err.value)
    assert not (cache / "m" / "model.safetensors").exists()
    assert not [p for p in cache.rglob("*.partial") if p.is_file()]

    s3.objects[base_model_file_key("m", "model.safetensors")] = good
    assert_complete(fetch(s3, cache))


def test_an_object_shorter_than_the_manifest_says_is_refused(s3: FakeS3, tmp_path: Path):
    key = base_model_file_key("m", "model.safetensors")
    s3.objects[key] = s3.objects[key][:-10]
    with pytest.raises(CorruptDownload, match="short"):
        fetch(s3, tmp_path / "cache")
    assert not (tmp_path / "cache" / "m" / "model.safetensors").exists()


def test_a_verified_model_is_not_fetched_again(s3: FakeS3, tmp_path: Path):
    cache = tmp_path / "cache"
    fetch(s3, cache)
    n = len(s3.fetched())
    assert_complete(fetch(s3, cache))
    assert len(s3.fetched()) == n


def test_a_truncated_or_deleted_local_file_is_fetched_again(s3: FakeS3, tmp_path: Path):
    cache = tmp_path / "cache"
    folder = fetch(s3, cache)
    with (folder / "model.safetensors").open("r+b") as fh:
        fh.truncate(100)
    (folder / "config.json").unlink()
    n = len(s3.fetched())

    assert_complete(fetch(s3, cache))
    again = s3.fetched()[n:]
    assert len(again) == PARTS["model.safetensors"] + PARTS["config.json"]


def test_only_fetches_just_the_files_named(s3: FakeS3, tmp_path: Path):
    cache = tmp_path / "cache"
    folder = fetch(s3, cache, only=TOKENIZER_FILES)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "tokenizer.json"]
    assert {g.split()[0] for g in s3.fetched()} == {
        base_model_file_key("m", "config.json"), base_model_file_key("m", "tokenizer.json")}

    n = len(s3.fetched())
    assert_complete(fetch(s3, cache))  # the rest later; what it has is kept
    assert len(s3.fetched()) - n == PARTS["model.safetensors"]


def test_a_re_registration_is_noticed(s3: FakeS3, tmp_path: Path):
    cache = tmp_path / "cache"
    fetch(s3, cache)
    changed = {"config.json": b'{"model_type": "qwen2"}', "tokenizer.json": MODEL["tokenizer.json"]}
    register(s3, "m", changed)  # model.safetensors and sub/extra.bin no longer listed
    n = len(s3.fetched())

    assert_complete(fetch(s3, cache), changed)
    assert s3.fetched()[n:] == [f"{base_model_file_key('m', 'config.json')} bytes=0-22"]


def test_an_unregistered_model_is_named(s3: FakeS3, tmp_path: Path):
    with pytest.raises(BaseModelNotRegistered, match="'other'"):
        ensure_local(s3, BUCKET, "other", tmp_path / "cache")


def test_a_manifest_naming_a_file_outside_the_folder_is_refused(s3: FakeS3, tmp_path: Path):
    register(s3, "m", {"../escape.bin": b"x"})
    with pytest.raises(CorruptDownload, match="outside"):
        fetch(s3, tmp_path / "cache")
    assert not (tmp_path / "cache" / "escape.bin").exists()


def test_a_folder_registered_multipart_comes_back_identical_from_real_s3(s3_server, tmp_path):
    """Against SeaweedFS: the registration uploads in parts (5 MiB, the smallest S3 allows)
    and a node fetches in ranged parts of another size; the copy is byte for byte the same."""
    from service.base_models.service import register

    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    files = {"config.json": b'{"model_type": "llama"}', "sub/tokenizer.json": b"{}",
             "model.safetensors": os.urandom(11 * 1024 * 1024 + 7)}
    for name, body in files.items():
        (folder / name).write_bytes(body)
    (folder / ".openft-base-model.json").write_text("{}")  # hidden: not part of the model
    blobs = s3_server.blobs()

    first = register(blobs, "cache-test", folder, part_size=5 * 1024 * 1024)
    again = register(blobs, "cache-test", folder, part_size=5 * 1024 * 1024)

    assert sorted(first.uploaded) == sorted(files) and again.unchanged
    head = s3_server.client().head_object(
        Bucket=s3_server.bucket, Key=base_model_file_key("cache-test", "model.safetensors"))
    assert head["ETag"].strip('"').endswith("-3")  # three parts: a multipart upload
    local = ensure_local(s3_server.client(), s3_server.bucket, "cache-test",
                         tmp_path / "cache", part_size=4 * 1024 * 1024)
    assert_complete(local, files)
