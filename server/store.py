"""The server's state behind one interface: users and their hashed API keys, accounts, spent challenges.

SQLiteStore (WAL, the embedded default) and PostgresStore (several replicas share one database) run the
same SQL. A batch is committed in one transaction: its challenge joins the spent set (a primary key, so
exactly one of any number of racing threads, processes or replicas wins) and its queries and costs are
added to the account, read under a write lock. The answer leaves only after that commit. The answer is
kept with the spent challenge until it expires, so a client whose connection broke can fetch the same
answer again with the same request (nothing is charged twice, and nothing new is revealed).
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from common.errors import UserError

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, key_hash TEXT UNIQUE NOT NULL,
        account TEXT NOT NULL, revoked INTEGER NOT NULL DEFAULT 0, created DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS accounts (account TEXT PRIMARY KEY, queries BIGINT NOT NULL DEFAULT 0,
        batches BIGINT NOT NULL DEFAULT 0, answer_s DOUBLE PRECISION NOT NULL DEFAULT 0, ledger TEXT,
        updated DOUBLE PRECISION)""",
    """CREATE TABLE IF NOT EXISTS spent (token TEXT PRIMARY KEY, expires DOUBLE PRECISION NOT NULL,
        account TEXT NOT NULL, queries INTEGER NOT NULL, request TEXT NOT NULL, response TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS spent_expires ON spent (expires)",
)
#: a SELECT per table of every column this code reads or writes: a database of another layout fails here
SCHEMA_CHECK = ("SELECT name, key_hash, account, revoked, created FROM users WHERE 1 = 0",
                "SELECT account, queries, batches, answer_s, ledger, updated FROM accounts WHERE 1 = 0",
                "SELECT token, expires, account, queries, request, response FROM spent WHERE 1 = 0")
LOCK_TIMEOUT_S = 10  # a write waits this long for the database's lock, then the request gets a 503
PRUNE_EVERY = 256  # commits between deletions of long-expired spent challenges
PRUNE_MARGIN_S = 3600.0  # a spent challenge is kept this long past its expiry (clock skew between replicas)
STATE_HELP = "--state sqlite:///PATH.db (embedded) or postgresql://USER@HOST:PORT/DB (shared by replicas)"


@dataclass(frozen=True)
class User:
    name: str
    account: str
    revoked: bool
    created: float


@dataclass(frozen=True)
class AccountRow:
    account: str
    queries: int
    batches: int
    answer_s: float
    ledger: list | None


@dataclass(frozen=True)
class Spent:
    token: str
    account: str
    queries: int
    request: str
    response: dict


class Store:
    """The common SQL; subclasses open connections (one per thread) and start write transactions."""
    placeholder = "?"

    def __init__(self):
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list = []
        self._commits = 0
        self.describe = ""

    # -- connections -------------------------------------------------------------------------------
    def _connect(self):
        raise NotImplementedError

    def _conn(self):
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            conns, self._connections = self._connections, []
        for conn in conns:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing what another thread may be using: best effort
                pass
        self._local = threading.local()

    def _sql(self, sql: str) -> str:
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)

    def _write(self):
        """A context manager around one write transaction; yields a cursor."""
        raise NotImplementedError

    def _read(self, sql: str, args=()) -> list:
        cur = self._conn().cursor()
        try:
            cur.execute(self._sql(sql), args)
            return cur.fetchall()
        finally:
            cur.close()

    def init_schema(self) -> None:
        with self._write() as cur:
            for statement in SCHEMA:
                cur.execute(statement)
            for statement in SCHEMA_CHECK:
                cur.execute(statement)

    # -- users ---------------------------------------------------------------------------------------
    def add_user(self, name: str, key_hash: str, account: str) -> None:
        with self._write() as cur:
            cur.execute(self._sql("SELECT 1 FROM users WHERE name = ?"), (name,))
            if cur.fetchone():
                raise UserError(f"user '{name}' exists already; choose another name, or revoke and re-add it "
                                f"under a new name")
            if account == name:  # a user's own account must not be a group that other users share
                cur.execute(self._sql("SELECT name FROM users WHERE account = ? AND name <> ?"), (name, name))
                if cur.fetchone():
                    raise UserError(f"'{name}' is the account of a group of users already; choose another name, or "
                                    f"pass --group {name} to join that group on purpose")
            cur.execute(self._sql("INSERT INTO users (name, key_hash, account, revoked, created) VALUES (?, ?, ?, 0, ?)"),
                        (name, key_hash, account, time.time()))

    def revoke(self, name: str) -> None:
        with self._write() as cur:
            cur.execute(self._sql("UPDATE users SET revoked = 1 WHERE name = ?"), (name,))
            if cur.rowcount == 0:
                raise UserError(f"no user '{name}'; list them with: python main.py serve-admin list-users")

    def users(self) -> list:
        rows = self._read("SELECT name, account, revoked, created FROM users ORDER BY name")
        return [User(r[0], r[1], bool(r[2]), float(r[3])) for r in rows]

    def user_by_key(self, key_hash: str) -> User | None:
        rows = self._read("SELECT name, account, revoked, created FROM users WHERE key_hash = ?", (key_hash,))
        return User(rows[0][0], rows[0][1], bool(rows[0][2]), float(rows[0][3])) if rows else None

    # -- accounts and the spent set ------------------------------------------------------------------
    def account(self, account: str) -> AccountRow:
        rows = self._read("SELECT queries, batches, answer_s, ledger FROM accounts WHERE account = ?", (account,))
        if not rows:
            return AccountRow(account, 0, 0, 0.0, None)
        q, b, s, ledger = rows[0]
        return AccountRow(account, int(q), int(b), float(s), json.loads(ledger) if ledger else None)

    def spent(self, token: str) -> Spent | None:
        rows = self._read("SELECT account, queries, request, response FROM spent WHERE token = ?", (token,))
        return Spent(token, rows[0][0], int(rows[0][1]), rows[0][2], json.loads(rows[0][3])) if rows else None

    def spent_count(self) -> int:
        return int(self._read("SELECT COUNT(*) FROM spent")[0][0])

    def commit(self, *, token: str, expires: float, account: str, queries: int, answer_s: float, merge,
               request: str, response: dict) -> AccountRow | Spent:
        """Spend `token` and charge `account` for `queries`, in one transaction. `merge(ledger or None) ->
        ledger` adds the batch's costs to the stored ledger. Returns the account after the batch, or, when
        the token was spent already (a lost race), that earlier Spent and nothing is charged."""
        with self._write() as cur:
            cur.execute(self._sql("INSERT INTO spent (token, expires, account, queries, request, response) "
                                  "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (token) DO NOTHING"),
                        (token, float(expires), account, int(queries), request, json.dumps(response)))
            if cur.rowcount != 1:
                cur.execute(self._sql("SELECT account, queries, request, response FROM spent WHERE token = ?"), (token,))
                row = cur.fetchone()
                return Spent(token, row[0], int(row[1]), row[2], json.loads(row[3]))
            cur.execute(self._sql("INSERT INTO accounts (account, queries, batches, answer_s) VALUES (?, 0, 0, 0) "
                                  "ON CONFLICT (account) DO NOTHING"), (account,))
            cur.execute(self._sql("SELECT queries, batches, answer_s, ledger FROM accounts WHERE account = ?"
                                  + self._for_update), (account,))
            q, b, s, ledger = cur.fetchone()
            merged = merge(json.loads(ledger) if ledger else None)
            row = AccountRow(account, int(q) + int(queries), int(b) + 1, float(s) + float(answer_s), merged)
            cur.execute(self._sql("UPDATE accounts SET queries = ?, batches = ?, answer_s = ?, ledger = ?, updated = ? "
                                  "WHERE account = ?"),
                        (row.queries, row.batches, row.answer_s, json.dumps(merged), time.time(), account))
            self._commits += 1
            if self._commits % PRUNE_EVERY == 0:
                cur.execute(self._sql("DELETE FROM spent WHERE expires < ?"), (time.time() - PRUNE_MARGIN_S,))
        return row

    _for_update = ""


class SQLiteStore(Store):
    """The embedded default: one file in WAL mode; every thread has its own connection, and a write takes
    the database's write lock first (BEGIN IMMEDIATE), so commits from threads and processes serialise."""

    def __init__(self, path):
        super().__init__()
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise UserError(f"the folder of the state database {self.path} does not exist; create it first "
                            f"({STATE_HELP})")
        self.describe = f"sqlite:///{self.path}"

    def _connect(self):
        conn = sqlite3.connect(str(self.path), timeout=LOCK_TIMEOUT_S, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")  # a committed batch survives a crash of the machine too
        conn.execute(f"PRAGMA busy_timeout={LOCK_TIMEOUT_S * 1000}")
        return conn

    class _Tx:
        def __init__(self, conn):
            self.conn = conn

        def __enter__(self):
            self.conn.execute("BEGIN IMMEDIATE")
            self.cur = self.conn.cursor()
            return self.cur

        def __exit__(self, exc_type, *exc):
            try:
                self.cur.close()
            finally:
                self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
            return False

    def _write(self):
        return self._Tx(self._conn())


class PostgresStore(Store):
    """PostgreSQL: replicas share users, accounts and the spent set. The account row is locked for the
    batch's update (SELECT ... FOR UPDATE); the spent set's primary key decides every race."""
    placeholder = "%s"
    _for_update = " FOR UPDATE"

    def __init__(self, dsn: str):
        super().__init__()
        try:
            import psycopg
        except ImportError as exc:  # pragma: no cover - psycopg is in requirements.txt
            raise UserError("PostgreSQL state needs psycopg: pip install -r requirements.txt") from exc
        self._psycopg, self.dsn = psycopg, dsn
        self.describe = "postgresql://" + (urlparse(dsn).hostname or "localhost")

    def _connect(self):
        try:
            conn = self._psycopg.connect(self.dsn, autocommit=True, connect_timeout=10)
            conn.execute(f"SET lock_timeout = '{LOCK_TIMEOUT_S}s'")
            return conn
        except self._psycopg.OperationalError as exc:
            raise UserError(f"cannot reach PostgreSQL at {self.describe}: {str(exc).strip().splitlines()[0]}; "
                            f"start it, or use {STATE_HELP}") from exc

    class _Tx:
        def __init__(self, conn):
            self.conn = conn

        def __enter__(self):
            self.tx = self.conn.transaction()
            self.tx.__enter__()
            self.cur = self.conn.cursor()
            return self.cur

        def __exit__(self, *exc):
            try:
                self.cur.close()
            finally:
                self.tx.__exit__(*exc)
            return False

    def _write(self):
        return self._Tx(self._conn())


def open_store(url: str) -> Store:
    """The store named by --state, with its tables created."""
    if not isinstance(url, str) or not url:
        raise UserError(f"no state database given; use {STATE_HELP}")
    if url.startswith("sqlite:///"):
        store = SQLiteStore(os.path.expanduser(url[len("sqlite:///"):]))
    elif url.startswith(("postgresql://", "postgres://")):
        store = PostgresStore(url)
    else:
        raise UserError(f"unknown state database '{url}'; use {STATE_HELP}")
    try:
        store.init_schema()
    except DRIVER_ERRORS as exc:
        store.close()
        raise UserError(f"{url} is not usable as this server's state database ({type(exc).__name__}: "
                        f"{str(exc).strip().splitlines()[0] if str(exc).strip() else 'no detail'}); give a new "
                        f"database, or the one serve-admin init made") from exc
    except BaseException:
        store.close()
        raise
    return store


def _driver_errors() -> tuple:
    errors = [sqlite3.Error]
    try:
        import psycopg
        errors.append(psycopg.Error)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


#: the database drivers' own errors: a locked, unreachable or foreign database (the server answers 503)
DRIVER_ERRORS = _driver_errors()
