"""Shared fixtures: throwaway MariaDB and RabbitMQ servers (session-wide), a fresh migrated
database per test, and the shared test photos (../shared/testdata beside the checkout)."""
from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from tests.support.services import MariaDB, RabbitMQ, have  # noqa: E402

TESTDATA = Path(os.environ.get("PHOTO_TESTDATA", PROJECT_ROOT.parent / "shared" / "testdata"))


@pytest.fixture(scope="session")
def shared_testdata() -> Path:
    if not TESTDATA.is_dir():
        pytest.skip(f"{TESTDATA} missing")
    return TESTDATA


@pytest.fixture(scope="session")
def mariadb(tmp_path_factory):
    if not have("mariadbd", "mariadb-install-db"):
        pytest.skip("mariadb-server not installed (make test installs it)")
    server = MariaDB(tmp_path_factory.mktemp("mariadb")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def rabbitmq(tmp_path_factory):
    if not os.path.exists("/usr/lib/rabbitmq/bin/rabbitmq-server"):
        pytest.skip("rabbitmq-server not installed (make test installs it)")
    server = RabbitMQ(tmp_path_factory.mktemp("rabbitmq")).start()
    yield server
    server.stop()


@pytest.fixture
def mysql_url(mariadb) -> str:
    """A fresh, migrated MariaDB database for one test."""
    from workers import db
    url = mariadb.create_database("t_" + uuid.uuid4().hex[:12])
    db.migrate(db.engine_for(url))
    return url


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    from workers import db
    url = f"sqlite:///{tmp_path / 'photo.db'}"
    db.migrate(db.engine_for(url))
    return url


@pytest.fixture(params=["sqlite", "mysql"])
def any_db_url(request) -> str:
    """Runs a test on both databases the schema must support."""
    return request.getfixturevalue(f"{request.param}_url")
