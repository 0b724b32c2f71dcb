"""``python -m service.migrate`` and the API's start-up migration: locked, idempotent, and an
API told not to migrate refuses an old schema."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from devstack.databases import fresh_database
from devstack.processes import free_port
from service.db import MIGRATION_LOCK_KEY, SchemaNotAtHead, head_revision, make_engine, migrate
from service.main import build_context, create_app
from service.settings import Settings
from tests.service.fake_ray import FakeRay, MemoryBlobs

ROOT = Path(__file__).resolve().parents[2]


def run_migrate(url: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENFT_")}
    env.update(OPENFT_DATABASE_URL=url, OPENFT_DATA_DIR=str(tmp_path / "data"))
    return subprocess.run([sys.executable, "-m", "service.migrate"], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=120)


def test_the_command_migrates_once_then_finds_the_schema_at_head(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'openft.db'}"

    first, second = run_migrate(url, tmp_path), run_migrate(url, tmp_path)

    assert first.returncode == 0, first.stderr
    assert f"from empty to {head_revision()}" in first.stdout
    assert second.returncode == 0, second.stderr
    assert f"already at head ({head_revision()})" in second.stdout


def test_two_commands_at_once_on_postgresql_take_turns(tmp_path: Path) -> None:
    with fresh_database() as url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENFT_")}
        env.update(OPENFT_DATABASE_URL=url, OPENFT_DATA_DIR=str(tmp_path / "data"))
        procs = [subprocess.Popen([sys.executable, "-m", "service.migrate"], env=env, cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        outs = [p.communicate(timeout=120) for p in procs]

        assert [p.returncode for p in procs] == [0, 0], outs
        said = sorted(out for out, _ in outs)
        assert "already at head" in said[0] and "migrated database schema" in said[1], said


def test_a_bare_postgresql_url_uses_the_installed_driver(tmp_path: Path) -> None:
    """``postgresql://`` (as managed databases write it) would mean psycopg 3 to SQLAlchemy
    2.1; openft installs psycopg2."""
    with fresh_database() as url:
        result = run_migrate(url.replace("postgresql+psycopg2://", "postgresql://"), tmp_path)

    assert result.returncode == 0, result.stderr
    assert "migrated database schema" in result.stdout


def test_a_migration_waits_for_the_lock_another_process_holds() -> None:
    with fresh_database() as url:
        holder = create_engine(url)
        engine = make_engine(url)
        done: list[object] = []
        try:
            with holder.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
                worker = threading.Thread(target=lambda: done.append(migrate(engine)))
                worker.start()
                worker.join(timeout=2)
                assert worker.is_alive() and not done  # blocked on the lock
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})
                conn.commit()
            worker.join(timeout=60)
            assert [m.after for m in done] == [head_revision()]  # type: ignore[attr-defined]
        finally:
            engine.dispose()
            holder.dispose()


def test_an_unreachable_database_is_one_line_without_the_password(tmp_path: Path) -> None:
    url = f"postgresql+psycopg2://openft:hunter2@127.0.0.1:{free_port()}/openft"

    result = run_migrate(url, tmp_path)

    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "openft:***@127.0.0.1" in lines[0]
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr


def _settings(tmp_path: Path, url: str, migrate_on_start: bool) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=url, api_keys="sk-m=org-m",
                    migrate_on_start=migrate_on_start, default_base_model=False,
                    ray_address="http://127.0.0.1:9", serving_url="http://127.0.0.1:9")


def _app(settings: Settings):
    return create_app(settings, run_scheduler=False,
                      context=lambda s: build_context(s, blobs=MemoryBlobs(), ray=FakeRay()))


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_an_api_that_may_not_migrate_refuses_an_old_schema(tmp_path: Path, db: str) -> None:
    def check(url: str) -> None:
        app = _app(_settings(tmp_path, url, migrate_on_start=False))
        with pytest.raises(SchemaNotAtHead, match=r"run `python -m service\.migrate`"), \
                TestClient(app):
            pass
        engine = make_engine(url)
        try:
            migrate(engine)
        finally:
            engine.dispose()
        with TestClient(_app(_settings(tmp_path, url, migrate_on_start=False))) as client:
            assert client.get("/healthz").status_code == 200

    if db == "sqlite":
        check(f"sqlite:///{tmp_path / 'openft.db'}")
    else:
        with fresh_database() as url:
            check(url)


def test_an_api_that_may_migrate_does_so_at_start(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'openft.db'}"

    with TestClient(_app(_settings(tmp_path, url, migrate_on_start=True))) as client:
        assert client.get("/healthz").status_code == 200

    engine = make_engine(url)
    try:
        migrate_again = migrate(engine)
    finally:
        engine.dispose()
    assert migrate_again.before == migrate_again.after == head_revision()
