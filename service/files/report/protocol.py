"""Wire shape of ``GET /v1/files/{file_id}/report`` (an openft extension, docs/api.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class TokenTotals(BaseModel):
    trained: int
    untrained: int
    total: int


class RowCount(TokenTotals):
    line: int


class HistogramBin(BaseModel):
    up_to: int
    rows: int


class Lengths(BaseModel):
    """Rendered lengths in tokens, before truncation."""

    min: int
    mean: float
    p50: int
    p90: int
    p99: int
    max: int
    histogram: list[HistogramBin]


class Truncation(BaseModel):
    rows: int
    lines: list[int]


class PreviewSegment(BaseModel):
    text: str
    trained: bool


class LossPreview(BaseModel):
    line: int
    segments: list[PreviewSegment]


class ExactDuplicate(BaseModel):
    lines: list[int]


class NearDuplicate(BaseModel):
    lines: list[int]
    similarity: float


class Duplicates(BaseModel):
    exact: list[ExactDuplicate]
    near: list[NearDuplicate]


class LeakedRow(BaseModel):
    line: int
    training_lines: list[int]
    kind: Literal["exact", "near"]


class ValidationOverlap(BaseModel):
    file_id: str
    rows: int
    leaked: list[LeakedRow]


class FindingOut(BaseModel):
    line: int
    kind: Literal["email", "phone", "card", "iban", "ip_address", "api_key", "private_key"]
    excerpt: str


class Estimate(BaseModel):
    basis: Literal["measured", "none"]
    jobs_measured: int
    tokens_per_second: float | None
    epochs: int
    tokens: int
    seconds: float | None
    gpus: int | None
    gpu_hours: float | None
    worker_hours: float | None


class FileReport(BaseModel):
    object: Literal["file.report"] = "file.report"
    file_id: str
    model: str
    max_seq_length: int
    rows: int
    tokens: TokenTotals
    per_row: list[RowCount]
    per_row_truncated: bool
    lengths: Lengths
    truncation: Truncation
    loss_preview: list[LossPreview]
    duplicates: Duplicates
    validation: ValidationOverlap | None
    findings: list[FindingOut]
    estimate: Estimate
