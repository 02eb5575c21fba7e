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
    """CREATE TABLE IF NOT EXISTS pending (token TEXT PRIMARY KEY, expires DOUBLE PRECISION NOT NULL,
        account TEXT NOT NULL, queries INTEGER NOT NULL, request TEXT NOT NULL, response TEXT NOT NULL,
        sealed TEXT NOT NULL, paid DOUBLE PRECISION NOT NULL, owed DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS pending_account ON pending (account)",
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
)
#: columns added to accounts since the first layout (a database made before gets them, set to 0)
ACCOUNT_COLUMNS = (("credit", "DOUBLE PRECISION NOT NULL DEFAULT 0"), ("priced", "DOUBLE PRECISION NOT NULL DEFAULT 0"),
                   ("weight", "DOUBLE PRECISION NOT NULL DEFAULT 0"))
#: a SELECT per table of every column this code reads or writes: a database of another layout fails here
SCHEMA_CHECK = ("SELECT name, key_hash, account, revoked, created FROM users WHERE 1 = 0",
                "SELECT account, queries, batches, answer_s, ledger, updated, credit, priced, weight FROM accounts "
                "WHERE 1 = 0",
                "SELECT token, expires, account, queries, request, response FROM spent WHERE 1 = 0",
                "SELECT token, expires, account, queries, request, response, sealed, paid, owed "
                "FROM pending WHERE 1 = 0",
                "SELECT name, value FROM meta WHERE 1 = 0")
MAX_PENDING = 32  # sealed, unpaid batches per account at once; more are refused (429) until paid or expired
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
    credit: float = 0.0  # work paid beyond the prices of the batches answered so far (spent on the next)
    priced: float = 0.0  # work of all answered batches' prices
    weight: float = 0.0  # the summed per-query weights of the answered queries


@dataclass(frozen=True)
class Owed:
    """A batch answered but sealed: `owed` more work must be paid (a top-up) before its answer leaves."""
    token: str
    owed: float
    paid: float
    expires: float


@dataclass(frozen=True)
class Sealed:
    """A sealed batch as stored: the answer, the batch's ledger delta and what pricing it needs."""
    token: str
    account: str
    queries: int
    request: str
    response: dict
    sealed: dict
    paid: float
    owed: float
    expires: float


class TooManyPending(Exception):
    """An account holds MAX_PENDING sealed batches already (a 429 for the client)."""


class Revoked(Exception):
    """The batch's user is revoked (or gone): checked inside the commit, so no revoked key spends."""


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
            have = self._columns(cur, "accounts")
            for name, kind in ACCOUNT_COLUMNS:
                if name not in have:
                    cur.execute(f"ALTER TABLE accounts ADD COLUMN {name} {kind}")
            for statement in SCHEMA_CHECK:
                cur.execute(statement)

    def _columns(self, cur, table: str) -> set:
        raise NotImplementedError

    # -- settings every replica shares ----------------------------------------------------------------
    def shared(self, name: str, value: str) -> str:
        """The value stored under `name`; `value` is stored first when there is none (the first replica's
        wins, and every later one reads it)."""
        with self._write() as cur:
            cur.execute(self._sql("INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING"),
                        (name, value))
            cur.execute(self._sql("SELECT value FROM meta WHERE name = ?"), (name,))
            return cur.fetchone()[0]

    def shared_value(self, name: str) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE name = ?", (name,))
        return rows[0][0] if rows else None

    def set_shared(self, name: str, value: str) -> None:
        with self._write() as cur:
            cur.execute(self._sql("INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE "
                                  "SET value = excluded.value"), (name, value))

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
            cur.execute(self._sql("INSERT INTO users (name, key_hash, account, revoked, created) "
                                  "VALUES (?, ?, ?, 0, ?)"),
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

    def active(self, name: str) -> bool:
        """Whether the user `name` is in the store and not revoked."""
        rows = self._read("SELECT revoked FROM users WHERE name = ?", (name,))
        return bool(rows) and not rows[0][0]

    # -- accounts and the spent set ------------------------------------------------------------------
    _ACCOUNT = "SELECT queries, batches, answer_s, ledger, credit, priced, weight FROM accounts WHERE account = ?"

    @staticmethod
    def _row(account: str, row) -> AccountRow:
        q, b, s, ledger, credit, priced, weight = row
        return AccountRow(account, int(q), int(b), float(s), json.loads(ledger) if ledger else None, float(credit),
                          float(priced), float(weight))

    def account(self, account: str) -> AccountRow:
        rows = self._read(self._ACCOUNT, (account,))
        return self._row(account, rows[0]) if rows else AccountRow(account, 0, 0, 0.0, None)

    def sealed(self, token: str) -> Sealed | None:
        rows = self._read("SELECT account, queries, request, response, sealed, paid, owed, expires FROM pending "
                          "WHERE token = ?", (token,))
        if not rows:
            return None
        a, q, req, resp, sealed, paid, owed, expires = rows[0]
        return Sealed(token, a, int(q), req, json.loads(resp), json.loads(sealed), float(paid), float(owed),
                      float(expires))

    def pending_count(self, account: str | None = None) -> int:
        if account is None:
            return int(self._read("SELECT COUNT(*) FROM pending")[0][0])
        return int(self._read("SELECT COUNT(*) FROM pending WHERE account = ?", (account,))[0][0])

    def spent(self, token: str) -> Spent | None:
        rows = self._read("SELECT account, queries, request, response FROM spent WHERE token = ?", (token,))
        return Spent(token, rows[0][0], int(rows[0][1]), rows[0][2], json.loads(rows[0][3])) if rows else None

    def spent_count(self) -> int:
        """Spent challenges that paid for batches (top-ups not counted)."""
        return int(self._read("SELECT COUNT(*) FROM spent WHERE request <> 'topup'")[0][0])

    def settle(self, *, token: str, expires: float, account: str, queries: int, answer_s: float, merge, price,
               paid: float, request: str, response: dict, sealed: dict, paid_token: str | None = None,
               paid_expires: float | None = None, slack: float = 0.0, user: str | None = None
               ) -> AccountRow | Spent | Owed:
        """Answer a batch if what was paid for it covers its price, in one transaction.

        The account row is locked first; `price(row) -> (work, weight)` prices the batch against the
        account as it is now (the batch's own costs included), so no challenge fetched earlier, and no
        request racing this one, pays a price other than the one current at this commit. `paid` (the
        challenge's work, or a top-up's) adds to what earlier calls paid for this batch; `paid_token`,
        when given, is a top-up's own token, spent here once (a top-up sent twice pays once). The
        account's credit (work paid beyond earlier prices) counts too, and the batch may leave the account
        owing up to `slack` of its price (negative credit, which the next challenge adds). When the batch is
        covered, its token is spent with the answer and the account charged; else the batch stays sealed (pending)
        and Owed says how much more work its answer needs. A token spent already returns that Spent.
        An account that holds MAX_PENDING sealed batches gets TooManyPending for a new one it would seal (a
        batch paid in full is answered), and a batch of a `user` who is revoked (or not in the store) gets
        Revoked, whatever was paid."""
        with self._write() as cur:
            # the account row is locked first: every settle of this token (bound to this account's user)
            # waits here, so the spent and sealed reads below see whatever a racing settle committed
            cur.execute(self._sql(self._ACCOUNT + self._for_update), (account,))
            found = cur.fetchone()
            if found is None:  # a new account: its row is made, then locked like any other
                cur.execute(self._sql("INSERT INTO accounts (account, queries, batches, answer_s) VALUES (?, 0, 0, 0) "
                                      "ON CONFLICT (account) DO NOTHING"), (account,))
                cur.execute(self._sql(self._ACCOUNT + self._for_update), (account,))
                found = cur.fetchone()
            before = self._row(account, found)
            self._check_user(cur, user)
            cur.execute(self._sql("SELECT account, queries, request, response FROM spent WHERE token = ?"), (token,))
            row = cur.fetchone()
            if row is not None:
                return Spent(token, row[0], int(row[1]), row[2], json.loads(row[3]))
            if paid_token is not None and not self._spend_topup(cur, paid_token, paid_expires or expires, account):
                paid = 0.0  # this top-up paid already
            cur.execute(self._sql("SELECT paid, request FROM pending WHERE token = ?"), (token,))
            prior = cur.fetchone()
            if prior is not None and prior[1] != request:  # another batch sealed under this challenge first
                return Spent(token, account, 0, prior[1], {})
            if prior is not None and paid_token is None:
                paid = 0.0  # the same batch again: its challenge's work was counted when it was sealed
            total = float(paid) + (float(prior[0]) if prior is not None else 0.0)
            need, weight = price(before)
            due = need * (1.0 - slack) - 1e-9 * max(1.0, need)  # a top-up of exactly the owed work covers it,
            if total + before.credit >= due:                     # whatever the floating-point rounding
                cur.execute(self._sql("INSERT INTO spent (token, expires, account, queries, request, response) "
                                      "VALUES (?, ?, ?, ?, ?, ?)"),
                            (token, float(expires), account, int(queries), request, json.dumps(response)))
                if prior is not None:
                    cur.execute(self._sql("DELETE FROM pending WHERE token = ?"), (token,))
                after = AccountRow(account, before.queries + int(queries), before.batches + 1,
                                   before.answer_s + float(answer_s), merge(before.ledger),
                                   before.credit + total - need, before.priced + need, before.weight + float(weight))
                self._charge(cur, after)
                return after
            owed = need * (1.0 - slack) - total - before.credit
            if prior is None:
                self._check_room(cur, account)
                self._seal(cur, Sealed(token, account, int(queries), request, response, sealed, total, owed,
                                       float(expires)))
            else:
                cur.execute(self._sql("UPDATE pending SET paid = ?, owed = ? WHERE token = ?"), (total, owed, token))
            return Owed(token, owed, total, float(expires))

    def _check_user(self, cur, user: str | None) -> None:
        """Inside settle's transaction: the batch of a revoked (or unknown) user is refused."""
        if user is None:
            return
        # the user's row is locked (PostgreSQL: FOR SHARE) until this commit, so a revoke either commits
        # before this read sees it, or waits until the batch is settled; SQLite's writes serialise anyway
        cur.execute(self._sql("SELECT revoked FROM users WHERE name = ?" + self._for_share), (user,))
        row = cur.fetchone()
        if row is None or row[0]:
            raise Revoked(user)

    def _check_room(self, cur, account: str) -> None:
        """Inside settle's transaction: an account holding MAX_PENDING sealed batches may seal no more."""
        cur.execute(self._sql("SELECT COUNT(*) FROM pending WHERE account = ? AND expires >= ?"),
                    (account, time.time()))
        if int(cur.fetchone()[0]) >= MAX_PENDING:
            raise TooManyPending(account)

    def _spend_topup(self, cur, token: str, expires: float, account: str) -> bool:
        """Spend a top-up's own token inside settle's transaction; False when it was spent already."""
        cur.execute(self._sql("INSERT INTO spent (token, expires, account, queries, request, response) "
                              "VALUES (?, ?, ?, 0, 'topup', '{}') ON CONFLICT (token) DO NOTHING"),
                    (token, float(expires), account))
        return cur.rowcount == 1

    def _seal(self, cur, held: Sealed) -> None:
        """Keep a batch's answer sealed until its top-up is paid, inside settle's transaction."""
        cur.execute(self._sql("INSERT INTO pending (token, expires, account, queries, request, response, sealed, "
                              "paid, owed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"),
                    (held.token, held.expires, held.account, held.queries, held.request, json.dumps(held.response),
                     json.dumps(held.sealed), held.paid, held.owed))

    def _charge(self, cur, after: AccountRow) -> None:
        """Write an answered batch's account row, inside settle's transaction (the row is locked)."""
        cur.execute(self._sql("UPDATE accounts SET queries = ?, batches = ?, answer_s = ?, ledger = ?, "
                              "updated = ?, credit = ?, priced = ?, weight = ? WHERE account = ?"),
                    (after.queries, after.batches, after.answer_s, json.dumps(after.ledger), time.time(),
                     after.credit, after.priced, after.weight, after.account))
        self._commits += 1
        if self._commits % PRUNE_EVERY == 0:
            self._prune(cur)

    def _prune(self, cur) -> None:
        cutoff = time.time() - PRUNE_MARGIN_S
        cur.execute(self._sql("DELETE FROM spent WHERE expires < ?"), (cutoff,))
        cur.execute(self._sql("DELETE FROM pending WHERE expires < ?"), (time.time(),))

    _for_update = ""
    _for_share = ""


class SQLiteStore(Store):
    """The embedded default: one file in WAL mode; every thread has its own connection, and a write takes
    the database's write lock first (BEGIN IMMEDIATE), so commits from threads and processes serialise."""

    def __init__(self, path, *, durable: bool = True):
        super().__init__()
        self.path, self.durable = Path(path), durable
        self._write_lock = threading.Lock()
        if not self.path.parent.is_dir():
            raise UserError(f"the folder of the state database {self.path} does not exist; create it first "
                            f"({STATE_HELP})")
        if not self.path.exists():  # keys' hashes and accounts: readable by the server's user only
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        self.describe = f"sqlite:///{self.path}"

    def _connect(self):
        conn = sqlite3.connect(str(self.path), timeout=LOCK_TIMEOUT_S, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed batch survives a crash of the machine too; a simulation (sybil) needs no fsync
        conn.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'OFF'}")
        conn.execute(f"PRAGMA busy_timeout={LOCK_TIMEOUT_S * 1000}")
        return conn

    def _columns(self, cur, table: str) -> set:
        cur.execute(f"PRAGMA table_info({table})")
        return {row[1] for row in cur.fetchall()}

    class _Tx:
        """One write transaction. Threads of this process queue on a lock first: SQLite's own busy
        handler sleeps in growing steps (up to 100 ms) while another connection writes, which gave the
        server a p99 of 200 ms under load; other processes still meet the busy handler."""

        def __init__(self, conn, lock):
            self.conn, self.lock = conn, lock

        def __enter__(self):
            self.lock.acquire()
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                self.cur = self.conn.cursor()
            except BaseException:
                self.lock.release()
                raise
            return self.cur

        def __exit__(self, exc_type, *exc):
            try:
                try:
                    self.cur.close()
                finally:
                    self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
            finally:
                self.lock.release()
            return False

    def _write(self):
        return self._Tx(self._conn(), self._write_lock)


class PostgresStore(Store):
    """PostgreSQL: replicas share users, accounts and the spent set. The account row is locked for the
    batch's update (SELECT ... FOR UPDATE); the spent set's primary key decides every race."""
    placeholder = "%s"
    _for_update = " FOR UPDATE"
    _for_share = " FOR SHARE"

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

    def _columns(self, cur, table: str) -> set:
        cur.execute("SELECT column_name FROM information_schema.columns WHERE table_name = %s "
                    "AND table_schema = current_schema()", (table,))
        return {row[0] for row in cur.fetchall()}


def open_store(url: str, *, durable: bool = True) -> Store:
    """The store named by --state, with its tables created."""
    if not isinstance(url, str) or not url:
        raise UserError(f"no state database given; use {STATE_HELP}")
    if url.startswith("sqlite:///"):
        store = SQLiteStore(os.path.expanduser(url[len("sqlite:///"):]), durable=durable)
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
