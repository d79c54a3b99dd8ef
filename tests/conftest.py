"""Shared pytest fixtures.

Sections:
  1. PostgreSQL server started by the suite itself (session scope).
  2. Store URLs: ``postgres_url``, ``sqlite_url``, ``store_url`` (memory / sqlite / postgresql),
     ``sql_store_url`` (sqlite / postgresql), and ``storage`` (an open store over ``store_url``).
  3. (Engine fixtures are added below by the engine's tests.)

Usage from any test module::

    def test_something(store_url):          # runs three times: [memory] [sqlite] [postgresql]
        engine = Engine.from_path(..., store=store_url)

    @pytest.mark.parametrize("store_url", ["sqlite", "postgresql"], indirect=True)
    def test_shared(store_url): ...         # a subset of the back ends

    def test_raw(storage):                  # an open Storage for each back end, closed after
        with storage.transaction() as tx: ...

PostgreSQL tests are skipped, loudly, when ``initdb``/``pg_ctl`` are not installed, unless
``CRMFLOW_REQUIRE_POSTGRES=1`` is set (then they fail). Select or deselect them with
``-m postgresql`` / ``-m "not postgresql"``.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from crmflow.plugins._storage_api import Storage


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "postgresql: needs the PostgreSQL server the suite starts")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Tests that ask for the server directly get the marker too, so `-m "not postgresql"`
    # really skips every test that would start it.
    # Same for `@pytest.mark.parametrize("store_url", ["sqlite", "postgresql"], indirect=True)`.
    for item in items:
        names = getattr(item, "fixturenames", ())
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec is not None else {}
        if (
            "postgres_url" in names
            or "postgres_server" in names
            or "postgresql" in (params.get("store_url"), params.get("sql_store_url"))
        ):
            item.add_marker(pytest.mark.postgresql)


# =============================================================================================
# 1. PostgreSQL server
# =============================================================================================

REQUIRE_POSTGRES = os.environ.get("CRMFLOW_REQUIRE_POSTGRES", "") not in ("", "0")


def _pg_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found

    def version(path: str) -> tuple[int, ...]:
        part = Path(path).parent.parent.name
        return tuple(int(p) for p in part.split(".") if p.isdigit())

    for path in sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=version, reverse=True):
        return path
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class PostgresServer:
    """A throw-away PostgreSQL cluster: trust auth, superuser ``postgres``, fsync off."""

    host: str
    port: int
    user: str
    directory: Path

    def url(self, dbname: str) -> str:
        """SQLAlchemy/crmflow URL of database ``dbname`` on this server."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{dbname}"

    def conninfo(self, dbname: str = "postgres") -> str:
        """libpq connection string (for raw psycopg connections)."""
        return f"host={self.host} port={self.port} user={self.user} dbname={dbname}"


def _unavailable(reason: str) -> None:
    if REQUIRE_POSTGRES:
        pytest.fail(f"CRMFLOW_REQUIRE_POSTGRES=1 but {reason}", pytrace=False)
    pytest.skip(
        f"!!! PostgreSQL tests NOT RUN: {reason}. Install the PostgreSQL server binaries "
        "(initdb, pg_ctl) or set CRMFLOW_REQUIRE_POSTGRES=1 to make this a failure."
    )


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """Start a private PostgreSQL server for the session (only if a test needs one)."""
    initdb, pg_ctl = _pg_binary("initdb"), _pg_binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        _unavailable("initdb/pg_ctl not found on PATH or in /usr/lib/postgresql/*/bin")
    assert initdb is not None and pg_ctl is not None
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg (3) is not installed")

    base = Path(tempfile.mkdtemp(prefix="crmflow-pg-"))
    as_root = os.geteuid() == 0
    # PostgreSQL refuses to run as root: run it as the postgres account, which must own
    # the data directory and the socket directory.
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    if as_root:
        shutil.chown(base, "postgres", "postgres")
    data = base / "data"

    def run(*cmd: str) -> None:
        proc = subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            log = base / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(
                f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n{tail}"
            )

    started = False
    try:
        run(
            initdb,
            "-D",
            str(data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        )
        for attempt in range(3):
            port = _free_port()
            options = (
                f"-k {base} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
            )
            try:
                # -l: the server must not inherit our pipes, or run() would wait forever.
                run(
                    pg_ctl,
                    "-D",
                    str(data),
                    "-l",
                    str(base / "server.log"),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    "60",
                    "start",
                )
                started = True
                break
            except RuntimeError:
                if attempt == 2:
                    raise
                time.sleep(0.2)  # the port was taken between probing and binding: retry
        yield PostgresServer("127.0.0.1", port, "postgres", base)
    finally:
        if started:
            subprocess.run(
                [*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(base, ignore_errors=True)


_db_numbers = itertools.count(1)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """URL of a fresh, empty database on the session's server (dropped after the test)."""
    import psycopg
    from psycopg import sql

    name = f"test_{os.getpid()}_{next(_db_numbers)}"
    with psycopg.connect(postgres_server.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield postgres_server.url(name)
    with psycopg.connect(postgres_server.conninfo(), autocommit=True) as conn:
        # FORCE: a test that failed half-way may still hold pooled connections.
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


# =============================================================================================
# 2. Store URLs and stores
# =============================================================================================


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """URL of a new SQLite file in the test's temporary directory."""
    return f"sqlite:///{tmp_path / 'crmflow.db'}"


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.postgresql),
    ]
)
def store_url(request: pytest.FixtureRequest) -> str:
    """One store URL per back end: ``memory://``, a SQLite file, a PostgreSQL database."""
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def sql_store_url(request: pytest.FixtureRequest) -> str:
    """Like ``store_url``, for the back ends shared between processes (no memory)."""
    name = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(name))


def open_storage(url: str) -> Storage:
    """Open ``url`` through the plugin manager, exactly as an engine does."""
    from crmflow.plugins._manager import make_plugin_manager

    manager = make_plugin_manager(load_entry_points=False)
    store = manager.hook.crmflow_open_storage(url=url)
    assert store is not None, f"no storage plugin handles {url!r}"
    return store  # type: ignore[no-any-return]


@pytest.fixture
def storage(store_url: str) -> Iterator[Storage]:
    """An open store for each back end of ``store_url``; closed after the test."""
    store = open_storage(store_url)
    yield store
    store.close()


# =============================================================================================
# 3. Engine fixtures (added by the engine's tests)
# =============================================================================================
