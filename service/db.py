"""SQL schema of the job store and the session plumbing.

The database is the truth about jobs (docs/architecture.md); the schema is created and migrated by
Alembic (``service/migrations``), never by ``create_all`` in production code.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    create_engine,
    event,
    false,
    make_url,
    text,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class FileRow(Base):
    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    organization: Mapped[str] = mapped_column(String(128), index=True)
    purpose: Mapped[str] = mapped_column(String(32))
    filename: Mapped[str] = mapped_column(String(512))
    bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default="processed")
    s3_key: Mapped[str] = mapped_column(String(512))
    created_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    """Creation order (:func:`service.ids.creation_order`): lists sort by it, as jobs do."""

    __table_args__ = (Index("ix_files_org_created_seq", "organization", "created_seq"),)


class FileIdempotencyRow(Base):
    """An upload's ``Idempotency-Key``: a repeat within the window returns ``file_id``
    instead of storing a second copy. The key is the primary key, so two racing repeats
    cannot both win; the file sweeper removes expired keys."""

    __tablename__ = "file_idempotency_keys"

    organization: Mapped[str] = mapped_column(String(128), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    file_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[int] = mapped_column(BigInteger, index=True)


class JobRow(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    organization: Mapped[str] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(String(256))
    training_file: Mapped[str] = mapped_column(String(64))
    validation_file: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str] = mapped_column(String(32), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    finished_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    method: Mapped[dict[str, Any]] = mapped_column(JSON)
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    seed: Mapped[int] = mapped_column(BigInteger)
    job_metadata: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    model_key: Mapped[str] = mapped_column(String(64), unique=True)
    """Internal adapter key: S3 ``models/{model_key}/``, served as ``<base>:<model_key>``."""
    fine_tuned_model: Mapped[str | None] = mapped_column(String(512), nullable=True, index=True)
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    result_files: Mapped[list[Any]] = mapped_column(JSON, default=list)
    ray_submission_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    events_cursor: Mapped[int] = mapped_column(Integer, default=0)
    """Number of event batches already ingested from S3: ingest resumes after them."""
    integrations: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    started_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    """When Ray first reported the run running; the base of ``estimated_finish``."""
    estimated_finish: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    run_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Ray submissions so far: each resume is a new run ``openft-{id}-r{n}``."""
    resume_from: Mapped[str | None] = mapped_column(String(512), nullable=True)
    """S3 prefix of the checkpoint the next run starts from (set by a pause)."""
    notified_status: Mapped[str | None] = mapped_column(String(32), nullable=True)
    """Terminal status already turned into webhook deliveries (each status notifies once)."""
    model_deleted_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    """Set by ``DELETE /v1/models/{ft model}``: the model is no longer listed or served."""

    base_model: Mapped[str | None] = mapped_column(String(256), nullable=True)
    """The base model trained on when ``model`` names a fine-tuned model (continued
    training); ``None`` when ``model`` is itself the base."""
    init_adapter_key: Mapped[str | None] = mapped_column(String(256), nullable=True)
    """Adapter (``models/{key}/``) that continued training starts from."""

    created_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    """Creation order (:func:`service.ids.creation_order`, nanoseconds): lists sort newest
    first by it. ``created_at`` has whole seconds, as OpenAI's objects do."""
    run_stop_pending: Mapped[bool] = mapped_column(Boolean, default=False,
                                                   server_default=false())
    """Cancelled, and its Ray run not yet stopped (Ray was away): the scheduler stops it."""
    base_valid_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    """The base model's loss on the whole validation file, before step 1."""
    best_checkpoint: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    """The checkpoint with the lowest full validation loss so far, as the job object shows
    it (id, step_number, fine_tuned_model_checkpoint, full_valid_loss): on the row so that
    a job list needs no query per job."""

    data_checks: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    """What the data report fails the job on at validation (``fail_on_leakage``,
    ``fail_on_secrets``); None: nothing."""

    __table_args__ = (Index("ix_jobs_org_created", "organization", "created_at"),
                      Index("ix_jobs_org_created_seq", "organization", "created_seq"))

    @property
    def base(self) -> str:
        """The base model id behind this job, whatever ``model`` named."""
        return self.base_model or self.model

    @property
    def method_type(self) -> str:
        return str((self.method or {}).get("type", "supervised"))

    @property
    def method_hyperparameters(self) -> dict[str, Any]:
        """Every hyperparameter of the job's method: as requested, then as resolved."""
        section = (self.method or {}).get(self.method_type) or {}
        return dict(section.get("hyperparameters") or {})


class JobEventRow(Base):
    __tablename__ = "job_events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    level: Mapped[str] = mapped_column(String(8))
    type: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class CheckpointRow(Base):
    __tablename__ = "job_checkpoints"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    step_number: Mapped[int] = mapped_column(Integer)
    fine_tuned_model_checkpoint: Mapped[str] = mapped_column(String(512), index=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    adapter_key: Mapped[str | None] = mapped_column(String(128), nullable=True)
    """Servable adapter at ``models/{adapter_key}/``."""
    state_key: Mapped[str | None] = mapped_column(String(512), nullable=True)
    """Resumable training state (S3 prefix), for pause/resume."""


class WebhookDeliveryRow(Base):
    """Outbox of webhook POSTs: written with the job's settlement, sent by a separate loop."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    """Also the Standard Webhooks ``webhook-id``: receivers dedupe retries on it."""
    organization: Mapped[str] = mapped_column(String(128))
    url: Mapped[str] = mapped_column(String(2048))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float, index=True)
    delivered_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    gave_up_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)


MIGRATION_LOCK_KEY = 0x6F66746D6967  # "oftmig": one PostgreSQL advisory lock for migrations
"""Held while a process migrates: hook Jobs and API replicas take turns, and the second
finds the schema at head and does nothing. (Not the scheduler's launch lock.)"""

PG_CONNECT_TIMEOUT_S = 10
"""libpq waits forever for an unreachable host by default; a probe or a start-up must not."""


class PoolSize(NamedTuple):
    """Connections one process may hold: more than its request threads
    (``OPENFT_REQUEST_THREADS``) plus the scheduler's, so a request rarely waits for one; one
    that waits ``timeout_s`` gets an enveloped 503 ``server_busy``."""

    size: int = 20
    overflow: int = 10
    timeout_s: float = 10.0


SQLITE_BUSY_TIMEOUT_S = 30


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    """WAL: readers never block the writer nor it them (in the default rollback journal a
    stream of reads starves every write into "database is locked"); NORMAL sync is durable
    across an application crash, which is what WAL needs for commits to survive a kill -9."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str, pool: PoolSize | None = None) -> Engine:
    pool = pool or PoolSize()
    sizing = {"pool_size": pool.size, "max_overflow": pool.overflow,
              "pool_timeout": pool.timeout_s}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # The scheduler thread and request threads share the file.
        engine = create_engine(url, connect_args={"check_same_thread": False,
                                                  "timeout": SQLITE_BUSY_TIMEOUT_S}, **sizing)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        # A bare URL (as managed databases hand them out) means SQLAlchemy's default driver,
        # psycopg 3 since 2.1; the one openft installs is psycopg2.
        parsed = parsed.set(drivername="postgresql+psycopg2")
    libpq = parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in (
        "psycopg2", "psycopg")
    return create_engine(parsed, pool_pre_ping=True, **sizing,
                         connect_args={"connect_timeout": PG_CONNECT_TIMEOUT_S} if libpq else {})


class Migration(NamedTuple):
    """What :func:`migrate` did: the revision found and the one left (equal: nothing)."""

    before: str | None
    after: str | None

    def describe(self) -> str:
        if self.before == self.after:
            return f"database schema already at head ({self.after})"
        return f"migrated database schema from {self.before or 'empty'} to {self.after}"


class SchemaNotAtHead(RuntimeError):
    """The API was told not to migrate (``OPENFT_MIGRATE_ON_START=false``) and the schema is
    older (or newer) than this code's."""


def _alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    return cfg


def head_revision() -> str | None:
    """The latest revision of this code's migrations."""
    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def _current_revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


@contextmanager
def _migration_lock(conn: Connection) -> Iterator[None]:
    """PostgreSQL: a session advisory lock on ``conn`` for as long as it migrates. SQLite
    serves one process and needs none."""
    if conn.dialect.name != "postgresql":
        yield
        return
    conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    conn.commit()
    try:
        yield
    finally:
        conn.rollback()  # a failed migration leaves the transaction aborted
        conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
        conn.commit()


def migrate(engine: Engine) -> Migration:
    """Bring the schema to the latest Alembic revision, one process at a time."""
    cfg = _alembic_config()
    with engine.connect() as conn, _migration_lock(conn):
        with conn.begin():
            before = _current_revision(conn)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            after = _current_revision(conn)
    return Migration(before, after)


def require_head(engine: Engine) -> None:
    """Raise :class:`SchemaNotAtHead` unless the schema is at this code's latest revision."""
    with engine.connect() as conn:
        current = _current_revision(conn)
    head = head_revision()
    if current != head:
        raise SchemaNotAtHead(
            f"the database schema is at revision {current or '(none: empty database)'}, "
            f"this openft needs {head}; OPENFT_MIGRATE_ON_START is false, so run "
            "`python -m service.migrate` first (the Helm chart's migration hook does)")


class Database:
    """The engine plus a session factory; one per process, opened in the app's lifespan."""

    def __init__(self, url: str, pool: PoolSize | None = None):
        self.engine = make_engine(url, pool)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One unit of work: committed on success, rolled back on error."""
        with self._sessions() as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    def dispose(self) -> None:
        self.engine.dispose()
