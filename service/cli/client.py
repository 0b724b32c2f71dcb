"""The CLI's only way to the server: HTTP.

OpenAI's routes go through the official ``openai`` SDK; openft's extensions (the data report,
live events, model download) through the SDK's generic ``get`` or, for the two streams, httpx
with the SDK's base URL and key. Every failure a user can cause or meet (the API's error
envelope, a server that cannot be reached) becomes a :class:`CliError`: one line on stderr and
exit code 1, never a traceback.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import openai

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
"""Where ``make run`` serves the API; ``OPENAI_BASE_URL`` or ``--base-url`` say otherwise."""

STREAM_TIMEOUT = 60.0
"""Seconds; a live stream sends a keep-alive at least every 15 s: 60 s of silence means it
is lost. A plain number, as the SDK's own client (httpx2, also what FastAPI's TestClient is
built on) takes it as well as httpx does."""


class CliError(Exception):
    """An expected failure, told to the user as one line."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.code = message, code

    def __str__(self) -> str:
        return f"{self.message} (code: {self.code})" if self.code else self.message


class StreamLost(CliError):
    """The connection under a stream broke, or the server answered 5xx: worth another try."""


@dataclass(frozen=True)
class Config:
    base_url: str
    api_key: str | None
    http_client: Any = None
    """An httpx-style client in place of the network (tests hand in FastAPI's TestClient)."""
    max_retries: int = 2


def envelope_error(status: int, body: object) -> CliError:
    """The API's ``{"error": {"message", "code", ...}}`` as a CliError (the SDK hands over the
    inner object; httpx the whole body)."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = body["error"]
    if isinstance(body, dict) and body.get("message"):
        return CliError(str(body["message"]), body.get("code") and str(body["code"]))
    return CliError(f"the server answered HTTP {status}: {str(body)[:200]}")


def translated(exc: BaseException, base_url: str) -> CliError | None:
    """The CliError an SDK exception means to a user; None for a real bug (the streams'
    httpx errors are CliErrors already)."""
    if isinstance(exc, openai.APIStatusError):
        return envelope_error(exc.status_code, exc.body)
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc
        return CliError(f"cannot reach the openft API at {base_url}: {cause}")
    if isinstance(exc, openai.OpenAIError):
        return CliError(str(exc))
    return None


class Api:
    """One server, one key: the SDK client plus the extension calls."""

    def __init__(self, config: Config) -> None:
        if not config.api_key:
            raise CliError("no API key: set OPENAI_API_KEY or pass --api-key "
                           "(`make run` writes one to .openft/api_key)")
        self.base_url = config.base_url.rstrip("/")
        self.sdk = openai.OpenAI(base_url=self.base_url, api_key=config.api_key,
                                 http_client=config.http_client,
                                 max_retries=config.max_retries)
        self._http = config.http_client or httpx.Client()

    # -- extensions ---------------------------------------------------------------------

    def file_report(self, file_id: str, model: str | None = None,
                    validation_file: str | None = None) -> dict[str, Any]:
        """``GET /files/{id}/report``: the data report, computed with ``model``'s tokenizer."""
        params = {k: v for k, v in (("model", model), ("validation_file", validation_file)) if v}
        return self.sdk.get(f"/files/{quote(file_id, safe='')}/report", cast_to=object,
                            options={"params": params})

    @contextmanager
    def job_event_lines(self, job_id: str, after: str | None) -> Iterator[Iterator[str]]:
        """The lines of ``GET /fine_tuning/jobs/{id}/events?stream=true``, resuming after the
        event id ``after`` (sent as ``Last-Event-ID``)."""
        headers = {"Accept": "text/event-stream", **({"Last-Event-ID": after} if after else {})}
        path = f"/fine_tuning/jobs/{quote(job_id, safe='')}/events"
        with self._stream(path, headers, {"stream": "true"}) as response:
            kind = response.headers.get("content-type", "")
            if not kind.startswith("text/event-stream"):
                raise CliError(f"{self.base_url} does not stream job events (it answered "
                               f"{kind or 'no content type'}): is it an openft with live events?")
            yield response.iter_lines()

    def download_model(self, model: str, target: Path | None,
                       on_progress: Callable[[int, int | None], None]) -> Path:
        """``GET /models/{model}/download`` written to ``target`` (a folder, or the archive's
        path; default: the current folder under the server's file name). Written to a
        ``.part`` file first, so a broken download leaves no archive that looks whole.
        ``on_progress(bytes_so_far, total_or_None)`` is called after each chunk."""
        with self._stream(f"/models/{quote(model, safe=':')}/download", {}, {}) as response:
            name = attachment_name(response.headers.get("content-disposition"), model)
            path = target_path(target, name)
            total = int(response.headers["content-length"]) \
                if response.headers.get("content-length", "").isdigit() else None
            part = path.with_name(path.name + ".part")
            done = 0
            try:
                with part.open("wb") as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
                        done += len(chunk)
                        on_progress(done, total)
            except BaseException:
                part.unlink(missing_ok=True)
                raise
            part.replace(path)
        return path

    @contextmanager
    def _stream(self, path: str, headers: dict[str, str],
                params: dict[str, str]) -> Iterator[httpx.Response]:
        url = self.base_url + path
        headers = {**self.sdk.auth_headers, **headers}
        try:
            with self._http.stream("GET", url, headers=headers, params=params,
                                   timeout=STREAM_TIMEOUT) as response:
                if response.status_code >= 400:
                    response.read()
                    try:
                        body: object = response.json()
                    except ValueError:
                        body = response.text
                    error = envelope_error(response.status_code, body)
                    if response.status_code >= 500:
                        raise StreamLost(error.message, error.code)
                    raise error
                yield response
        except httpx.TransportError as e:
            raise StreamLost(f"connection to {self.base_url} lost: {e or type(e).__name__}") \
                from e


def attachment_name(disposition: str | None, model: str) -> str:
    """The file name a ``Content-Disposition: attachment; filename="..."`` header gives, kept
    to a bare name (never a path); else one made from the model id.

    >>> attachment_name('attachment; filename="ft-tiny-abc.tar.gz"', "ft:tiny:abc")
    'ft-tiny-abc.tar.gz'
    >>> attachment_name('attachment; filename="../../etc/x.tar.gz"', "m")
    'x.tar.gz'
    >>> attachment_name(None, "ft:tiny:o:s:abc")
    'ft-tiny-o-s-abc.tar.gz'
    """
    found = re.search(r'filename="?([^";]+)"?', disposition or "")
    name = Path(found.group(1)).name if found else ""
    return name or re.sub(r"[^A-Za-z0-9._-]+", "-", model) + ".tar.gz"


def target_path(target: Path | None, name: str) -> Path:
    """Where ``-o`` puts the archive: into a folder that exists (or is written with a trailing
    slash), else at the path given; nothing given: the current folder."""
    if target is None:
        return Path(name)
    if target.is_dir() or str(target).endswith(("/", "\\")):
        target.mkdir(parents=True, exist_ok=True)
        return target / name
    if not target.parent.is_dir():
        raise CliError(f"no such folder: {target.parent}")
    return target
