"""``GET /v1/models/{model}/download``: a fine-tuned model or checkpoint as a streamed .tar.gz.

The archive writer and the model card are pure and tested alone; the route runs on the real
app with SeaweedFS, adapters put in the bucket as training leaves them.
"""

from __future__ import annotations

import doctest
import io
import json
import os
import tarfile
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

import service.models.download
from contract.bucket import ADAPTER_CONFIG, ADAPTER_WEIGHTS, adapter_prefix
from devstack.processes import free_port
from service.db import CheckpointRow
from service.ids import new_id, now
from service.main import build_context, create_app
from service.models.download import (
    ArchiveChanged,
    DataFile,
    Member,
    ModelCard,
    render_card,
    tar_gz,
)
from service.settings import Settings
from service.storage import BlobStore
from tests.service.conftest import KEY_A, api_settings, chat_jsonl
from tests.service.fake_ray import FakeRay
from tests.service.test_files_and_auth import assert_envelope, upload
from tests.service.test_jobs_api import create_job
from tests.service.test_jobs_methods import succeed, validated

TOKENIZER = {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
             "generation_config.json"}


def test_doctests():
    assert doctest.testmod(service.models.download).failed == 0


# The archive writer ------------------------------------------------------------------------


def member(name: str, data: bytes, pieces: int = 3, calls: list[str] | None = None) -> Member:
    def chunks() -> Iterator[bytes]:
        if calls is not None:
            calls.append(name)
        step = max(1, len(data) // pieces)
        for i in range(0, len(data), step):
            yield data[i:i + step]
    return Member(name, len(data), chunks, mtime=1_700_000_000)


def unpack(blob: bytes) -> dict[str, tarfile.TarInfo | bytes]:
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        return {m.name: (tar.extractfile(m).read() if m.isfile() else m) for m in tar}


def test_archive_reads_back_with_tarfile_under_one_folder():
    files = {"a.json": b'{"x": 1}', "weights.bin": os.urandom(5000), "empty": b"",
             "block.bin": b"\x00" * 512}

    blob = b"".join(tar_gz("my-model", [member(n, d) for n, d in files.items()]))

    got = unpack(blob)
    assert got.pop("my-model").isdir()
    assert got == {f"my-model/{n}": d for n, d in files.items()}
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        assert {m.mode for m in tar if m.isfile()} == {0o644}
        assert tar.getmember("my-model/a.json").mtime == 1_700_000_000


def test_archive_is_written_as_members_are_read():
    """Bytes leave before the next member is opened: nothing waits for the whole archive."""
    calls: list[str] = []
    stream = tar_gz("m", [member("first", os.urandom(4 << 20), pieces=8, calls=calls),
                          member("second", os.urandom(1 << 20), calls=calls)])

    before_second = []
    for out in stream:
        if "second" in calls:
            break
        before_second.append(out)

    assert sum(map(len, before_second)) > 3 << 20  # most of the first (incompressible) member
    assert len(unpack(b"".join([*before_second, out, *stream]))) == 3


@pytest.mark.parametrize("data", [b"short", b"x" * 20])
def test_an_object_whose_size_changed_ends_the_stream(data):
    changed = Member("w", 10, lambda: [data])

    with pytest.raises(ArchiveChanged):
        b"".join(tar_gz("m", [changed]))


# The model card ----------------------------------------------------------------------------


def card(**overrides) -> ModelCard:
    return ModelCard(**{
        "model": "ft:tiny-llama:org-a:geo:abc", "base_model": "tiny-llama",
        "job_id": "ftjob-1", "method": "supervised", "full_finetune": False,
        "hyperparameters": {"n_epochs": 3, "learning_rate_multiplier": 2.0, "lora_r": 8},
        "training_file": DataFile("file-t", 12345), "validation_file": DataFile("file-v", None),
        "trained_tokens": 4200, "finished_at": 1_767_225_600,
        "metrics": [(2, {"step": 2, "train_loss": 1.9, "valid_loss": 1.2}),
                    (4, {"step": 4, "train_loss": 0.8, "valid_loss": 0.9,
                         "full_valid_loss": 0.95}),
                    (6, {"step": 6, "train_loss": 0.3, "valid_loss": 1.1,
                         "full_valid_loss": 1.05})],
        "base_valid_loss": 2.5, "files": ["README.md", "adapter_config.json"], **overrides})


def test_model_card_names_base_method_hyperparameters_data_and_metrics():
    text = render_card(card())

    assert text.startswith("# ft:tiny-llama:org-a:geo:abc\n")
    for expected in ["| Base model | `tiny-llama` |", "| Method | supervised (LoRA) |",
                     "| Job | `ftjob-1` |", "| Training file | `file-t` (12,345 bytes) |",
                     "| Validation file | `file-v` (deleted) |", "| Trained tokens | 4,200 |",
                     "| Finished | 2026-01-01 00:00 UTC |",
                     "| learning_rate_multiplier | 2 |", "| n_epochs | 3 |",
                     "| | step | full_valid_loss | train_loss | valid_loss |",
                     "| final | 6 | 1.05 | 0.3 | 1.1 |",
                     # best by the whole-file loss (step 4), not the sampled one (step 2)
                     "| best (lowest validation loss) | 4 | 0.95 | 0.8 | 0.9 |",
                     "The base model's validation loss before training: 2.5.",
                     "- `adapter_config.json`", "PeftModel.from_pretrained(base, "
                     '"ft-tiny-llama-org-a-geo-abc")']:
        assert expected in text, expected
    assert "this checkpoint" not in text


def test_model_card_of_a_checkpoint_and_of_a_full_fine_tune():
    ckpt = render_card(card(model="ft:tiny-llama:org-a:geo:abc:ckpt-step-2", step=2))
    assert "the checkpoint at step 2 of fine-tuning job `ftjob-1`" in ckpt
    assert "| this checkpoint | 2 | - | 1.9 | 1.2 |" in ckpt

    full = render_card(card(full_finetune=True, metrics=[], base_valid_loss=None))
    assert "A full fine-tune of **tiny-llama**" in full
    assert "| Method | supervised (full fine-tune) |" in full
    assert "No metrics were recorded." in full and "PeftModel" not in full


# The route ---------------------------------------------------------------------------------


def put_adapter(blobs: BlobStore, model_key: str, tag: str) -> dict[str, bytes]:
    files = {ADAPTER_CONFIG: json.dumps({"peft_type": "LORA", "r": 8, "tag": tag}).encode(),
             ADAPTER_WEIGHTS: os.urandom(300_000)}
    for name, data in files.items():
        blobs.put(adapter_prefix(model_key) + name, data)
    return files


def fine_tuned(client, app, headers, **job) -> tuple[str, str, str]:
    """A succeeded job of the caller's organization with its final adapter and one
    checkpoint's in the bucket; returns (model, checkpoint name, job id)."""
    file_id = upload(client, headers, chat_jsonl(12)).json()["id"]
    job_id = create_job(client, headers, file_id, **job).json()["id"]
    validated(client, app, headers, job_id)
    model, model_key = succeed(app, job_id)
    with app.state.ctx.db.session() as s:
        for step, key, loss in [(3, f"{model_key}-step-00000003", 0.5), (6, model_key, 0.7)]:
            s.add(CheckpointRow(
                id=new_id("ftckpt"), job_id=job_id, created_at=now(), step_number=step,
                fine_tuned_model_checkpoint=f"{model}:ckpt-step-{step}", adapter_key=key,
                metrics={"step": step, "train_loss": loss * 2, "valid_loss": loss}))
    return model, f"{model}:ckpt-step-3", job_id


def download(client, headers, model: str):
    return client.get(f"/v1/models/{model}/download", headers=headers)


def test_download_of_a_fine_tuned_model_streams_adapter_tokenizer_and_card(
        client, app, as_a, tiny_model_dir):
    model, _, job_id = fine_tuned(client, app, as_a)
    model_key = model.rsplit(":", 1)[1]
    adapter = put_adapter(app.state.ctx.blobs, model_key, "final")

    resp = download(client, as_a, model)

    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/gzip"
    folder = f"ft-tiny-llama-org-a-{model_key}"
    assert resp.headers["content-disposition"] == f'attachment; filename="{folder}.tar.gz"'
    assert "content-length" not in resp.headers  # streamed, its size unknown up front
    got = unpack(resp.content)
    assert got.pop(folder).isdir()
    assert set(got) == {f"{folder}/{n}" for n in {*adapter, *TOKENIZER, "README.md"}}
    for name, data in adapter.items():
        assert got[f"{folder}/{name}"] == data
    for name in TOKENIZER:  # what training tokenized with: the base model's own files
        assert got[f"{folder}/{name}"] == (tiny_model_dir / name).read_bytes()
    readme = got[f"{folder}/README.md"].decode()
    training_file = client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=as_a).json()[
        "training_file"]
    for expected in [f"# {model}", "| Base model | `tiny-llama` |", f"| Job | `{job_id}` |",
                     f"| Training file | `{training_file}` ({len(chat_jsonl(12)):,} bytes) |",
                     "| Trained tokens | 10 |", "| n_epochs |", "| final | 6 | 1.4 | 0.7 |",
                     "| best (lowest validation loss) | 3 | 1 | 0.5 |"]:
        assert expected in readme, expected
    # The OpenAI route still retrieves the model itself.
    assert client.get(f"/v1/models/{model}", headers=as_a).json()["id"] == model


def test_the_openai_sdk_streams_it_to_a_file(client, app, as_a, tmp_path):
    model, _, _ = fine_tuned(client, app, as_a)
    adapter = put_adapter(app.state.ctx.blobs, model.rsplit(":", 1)[1], "final")
    sdk = OpenAI(base_url="http://testserver/v1", api_key=KEY_A, http_client=client,
                 max_retries=0)

    resp = sdk.get(f"/models/{model}/download", cast_to=httpx.Response, stream=True)
    try:
        with (tmp_path / "m.tar.gz").open("wb") as f:
            for chunk in resp.iter_bytes():
                f.write(chunk)
    finally:
        resp.close()

    with tarfile.open(tmp_path / "m.tar.gz") as tar:
        weights = next(m for m in tar if m.name.endswith(ADAPTER_WEIGHTS))
        assert tar.extractfile(weights).read() == adapter[ADAPTER_WEIGHTS]


def test_download_of_a_checkpoint_is_that_checkpoint_s_adapter(client, app, as_a):
    model, checkpoint, _ = fine_tuned(client, app, as_a)
    model_key = model.rsplit(":", 1)[1]
    put_adapter(app.state.ctx.blobs, model_key, "final")
    early = put_adapter(app.state.ctx.blobs, f"{model_key}-step-00000003", "step 3")

    resp = download(client, as_a, checkpoint)

    assert resp.status_code == 200, resp.text
    folder = f"ft-tiny-llama-org-a-{model_key}-ckpt-step-3"
    got = unpack(resp.content)
    assert got[f"{folder}/{ADAPTER_WEIGHTS}"] == early[ADAPTER_WEIGHTS]
    assert json.loads(got[f"{folder}/{ADAPTER_CONFIG}"])["tag"] == "step 3"
    assert "the checkpoint at step 3" in got[f"{folder}/README.md"].decode()


def test_download_of_a_full_fine_tune_is_its_hugging_face_folder(client, app, as_a):
    model, _, _ = fine_tuned(client, app, as_a, method={
        "type": "supervised", "supervised": {"hyperparameters": {"full_finetune": True}}})
    blobs = app.state.ctx.blobs
    model_key = model.rsplit(":", 1)[1]
    prefix = adapter_prefix(model_key)
    folder_files = {"config.json": b"{}", "model.safetensors": os.urandom(70_000),
                    "tokenizer.json": b'{"model": {}}', "chat_template.jinja": b"{{ x }}"}
    for name, data in folder_files.items():
        blobs.put(prefix + name, data)

    got = unpack(download(client, as_a, model).content)

    folder = f"ft-tiny-llama-org-a-{model_key}"
    assert {k: v for k, v in got.items() if k != f"{folder}/README.md" and k != folder} == {
        f"{folder}/{n}": d for n, d in folder_files.items()}
    assert "(full fine-tune)" in got[f"{folder}/README.md"].decode()


def test_base_unknown_deleted_and_other_organizations_models_are_404(client, app, as_a, as_b):
    model, checkpoint, _ = fine_tuned(client, app, as_a)
    put_adapter(app.state.ctx.blobs, model.rsplit(":", 1)[1], "final")

    unknown = assert_envelope(download(client, as_a, model + "x"), 404, code="model_not_found")
    for name in (model, checkpoint):  # another organization: exactly as if it did not exist
        err = assert_envelope(download(client, as_b, name), 404, code="model_not_found")
        assert err == {**unknown, "message": unknown["message"].replace(model + "x", name)}
    assert_envelope(download(client, as_a, "tiny-llama"), 404, code="model_not_found")
    assert client.delete(f"/v1/models/{model}", headers=as_a).status_code == 200
    for name in (model, checkpoint):
        assert_envelope(download(client, as_a, name), 404, code="model_not_found")


def test_a_model_whose_files_are_gone_is_an_enveloped_500(client, app, as_a):
    model, _, _ = fine_tuned(client, app, as_a)  # nothing put in the bucket

    assert_envelope(download(client, as_a, model), 500, code="model_files_missing")


def test_with_s3_down_the_download_is_an_enveloped_503_before_any_byte(
        client, app, settings: Settings, as_a):
    model, _, _ = fine_tuned(client, app, as_a)
    dead = BlobStore(f"http://127.0.0.1:{free_port()}", settings.s3_bucket, "ak", "sk")
    down = create_app(settings, run_scheduler=False,
                      context=lambda s: build_context(s, blobs=dead, ray=FakeRay()))
    with TestClient(down, raise_server_exceptions=False) as c:
        err = assert_envelope(download(c, as_a, model), 503, code="service_unavailable")
    assert err["type"] == "server_error"


def test_a_base_model_named_like_a_download_is_still_retrieved(
        tmp_path, tiny_model_dir, database_url, s3_server, as_a):
    settings = api_settings(tmp_path, tiny_model_dir, database_url, s3_server,
                            base_models={"tiny-llama": tiny_model_dir,
                                         "acme/download": tiny_model_dir})
    app = create_app(settings, run_scheduler=False,
                     context=lambda s: build_context(s, ray=FakeRay()))
    with TestClient(app) as c:
        resp = c.get("/v1/models/acme/download", headers=as_a)
        assert resp.json()["id"] == "acme/download"
        assert resp.json()["object"] == "model"
        assert_envelope(c.get("/v1/models/acme/download/download", headers=as_a), 404,
                        code="model_not_found")
