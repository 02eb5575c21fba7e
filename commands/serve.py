"""serve, serve-admin and query: the guarded prediction API from the command line."""
from __future__ import annotations

import io
import ipaddress
import logging
import socket
import sys
from pathlib import Path

import numpy as np

from common.errors import UserError
from common.io import atomic_write_bytes, check_outputs
from models.oracle import OUTPUTS
from parameters import (
    add_accountant,
    add_calibration,
    add_common,
    add_pate,
    add_puzzle,
    add_server_state,
    add_split_price,
    add_victim,
    default_text,
    listed,
    number,
    one_of,
)
from pow.puzzles import valid_user
from pow.solver import default_workers
from pow.timing import TABLES
from privacy.accountants import COST_MEASURES
from server.build import DeploymentConfig, check_model_files, check_serve, shared_pricer, size_threads
from server.client import ApiClient, resolve_api_key
from server.keys import check_new_key_file, hash_api_key, init_key_file, new_api_key, server_key
from server.serving import ServiceRecipe, serve_socket
from server.store import open_store

log = logging.getLogger(__name__)


def serve(s) -> tuple:
    """Run the API with uvicorn, in one process or --processes, until interrupted."""
    key = server_key(s.key_file)
    config = DeploymentConfig.of(s.as_dict())
    check_serve(config)
    check_model_files(config)  # read once here; each worker reads them again as it builds
    sock = _bind(s.host, s.port)  # a port in use fails here, before any file is opened or made
    try:
        where = _prepare_store(config, s.state, s.processes)
        threads, per = size_threads(s.threads, s.processes)
        if not _loopback(s.host):
            print(f"warning: listening on {s.host}, not loopback: put a TLS proxy in front, since API keys and "
                  f"answers travel in clear", file=sys.stderr)
        shape = f"{s.processes} processes x " if s.processes > 1 else ""
        serve_socket(sock, ServiceRecipe(config, s.state, key, s.threads, s.processes), processes=s.processes,
                     worker_timeout_s=s.worker_timeout,
                     on_ready=lambda: print(f"serving {s.dataset} on http://{s.host}:{s.port} (state {where}, {shape}"
                                            f"{threads} threads x {per} torch threads); docs at /docs",
                                            file=sys.stderr, flush=True))
    finally:
        sock.close()
    return None, "server stopped"


def _prepare_store(config: DeploymentConfig, state: str, processes: int) -> str:
    """Open (or make) the store once before any worker starts, so a bad --state fails here; with several
    processes, the live timing table is measured once, here, for all. Returns the store's description."""
    store = open_store(state)
    try:
        if processes > 1:
            shared_pricer(config, store, config.workers or default_workers())
        return store.describe
    finally:
        store.close()


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _bind(host: str, port: int):
    """A listening socket on host:port; a UserError when it cannot be had."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UserError(f"--host {host} is not an address of this machine ({exc}); use 127.0.0.1") from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); the port is in use or not "
                        f"yours: choose another --port") from exc
    sock.set_inheritable(True)
    return sock


def serve_admin(s) -> tuple:
    """init | add-user NAME [--group G] | list-users | revoke NAME."""
    if s.action == "init":
        if not s.key_file:
            raise UserError("serve-admin init needs --key_file PATH (where the new HMAC key goes)")
        check_new_key_file(s.key_file)
        open_store(s.state).close()  # a bad --state fails before the key is written
        path = init_key_file(s.key_file)
        return path, (f"wrote a new HMAC key to {path} (mode 0600) and the tables of {s.state}\n"
                      f"start the server with: python main.py serve --key_file {path} --state {s.state} ...")
    if s.action == "add-user":
        if not valid_user(s.name):
            raise UserError("add-user needs a NAME of 1 to 64 characters of A-Z a-z 0-9 . _ -")
        if not valid_user(s.group or s.name):
            raise UserError("--group must be 1 to 64 characters of A-Z a-z 0-9 . _ -")
    if s.action == "revoke" and not s.name:
        raise UserError("revoke needs the user's NAME")
    store = open_store(s.state)
    try:
        if s.action == "add-user":
            group = s.group or s.name
            key = new_api_key()
            store.add_user(s.name, hash_api_key(key), group)
            return key, (f"{key}\n# user '{s.name}' added (account '{group}'); this key is shown once and only "
                         f"its hash is stored")
        if s.action == "list-users":
            users = store.users()
            lines = [f"{'name':24} {'account':24} {'status':8} queries"]
            for u in users:
                row = store.account(u.account)
                lines.append(f"{u.name:24} {u.account:24} {'revoked' if u.revoked else 'active':8} {row.queries}")
            return users, "\n".join(lines) if users else "no users; add one with: serve-admin add-user NAME"
        if s.action == "revoke":
            store.revoke(s.name)
            return s.name, f"revoked user '{s.name}'; its key is refused from now on"
        raise UserError(f"unknown serve-admin action '{s.action}'; valid: init, add-user, list-users, revoke")
    finally:
        store.close()


def query(s) -> tuple:
    """Send the inputs of one .npy file to a server; print (and with --out, save) the answers."""
    path = Path(s.input or "")
    if not s.input or not path.is_file():
        raise UserError(f"--input {s.input} is not a file; give a .npy array of images (N, C, H, W)")
    if s.out:
        check_outputs({"--out": s.out}, {"--input": s.input})
        if Path(s.out).exists() or Path(s.out).is_symlink():
            raise UserError(f"--out {s.out} exists already; choose a new file (answers never replace a file)")
    try:
        x = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise UserError(f"--input {path} is not a plain .npy array ({exc}); save it with numpy.save") from exc
    if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
        raise UserError(f"--input {path} holds {x.dtype}; images must be uint8 (0..255) or floats in [0, 1]")
    with ApiClient(s.server, resolve_api_key(s.api_key), workers=s.workers) as client:
        answers = client.predict(x)
        account = client.account()
    if s.out:
        buffer = io.BytesIO()
        np.save(buffer, answers, allow_pickle=False)
        atomic_write_bytes(s.out, buffer.getvalue())
    text = (f"answers: {answers.tolist() if answers.ndim == 1 else answers.round(4).tolist()}\n"
            f"# {len(x)} inputs, PoW {client.pow_time_s:.3f} s, server {client.wait_time_s:.3f} s; account "
            f"{account['queries']} queries, next batch ~{account['next']['seconds']:.3f} s of PoW")
    return answers, text


def add_serve_arguments(sub) -> None:
    p = sub.add_parser("serve", help="serve the victim over HTTP; every batch costs a calibrated proof-of-work")
    add_common(p)
    add_victim(p)
    p.add_argument("--victim_output", default=None, choices=OUTPUTS,
                   help=f"what the API answers: labels, or probs {default_text('victim_output')}")
    add_accountant(p)
    add_pate(p)
    add_calibration(p)
    add_puzzle(p)
    p.add_argument("--timing_table", default=None, choices=TABLES,
                   help="a client's solve speed: live (measured here at start, --workers processes) or "
                        f"measured (--timing_csv) {default_text('timing_table')}")
    p.add_argument("--timing_csv", default=None, help=f"pow-calibrate's CSV {default_text('timing_csv')}")
    p.add_argument("--calibration", default=None, required=True,
                   help="a legitimate user's log.csv (a standard run's): the baseline prices are set against")
    add_server_state(p)
    p.add_argument("--host", default=None, help="address to listen on (default: 127.0.0.1, loopback only)")
    p.add_argument("--port", type=number(int, 1, 65535), default=None, help="(default: 8000)")
    p.add_argument("--max_batch", type=number(int, 1, 100_000), default=None,
                   help=f"most inputs one challenge pays for {default_text('max_batch')}")
    p.add_argument("--ttl_s", type=number(float, 1, 86400), default=None,
                   help=f"challenge lifetime, s {default_text('ttl_s')}")
    p.add_argument("--rate", type=number(float, 0, 1e6, lo_open=True), default=None,
                   help=f"requests per second per API key, sustained {default_text('rate')}")
    p.add_argument("--burst", type=number(int, 1, 10 ** 6), default=None,
                   help=f"requests per API key at once {default_text('burst')}")
    p.add_argument("--threads", type=number(int, 1, 1024), default=None,
                   help="request threads of each process; torch gets cores / (threads x processes) each, at least "
                        "1 (default: twice the cores, shared out over the processes)")
    p.add_argument("--processes", type=number(int, 1, 64), default=None,
                   help="server processes on the one port, each its own interpreter, service and store connection; "
                        "the rate limit is per process, so a key may reach processes x --rate (default: 1)")
    p.add_argument("--worker_timeout", type=number(float, 2, 86400), default=None,
                   help="with --processes 2 or more: a worker whose event loop has been silent this many seconds "
                        f"(stopped, or hung) is killed and started again {default_text('worker_timeout')}")
    add_split_price(p)
    p.add_argument("--log_costs", default=None, type=listed(one_of(COST_MEASURES, "cost measure"), "cost measure"),
                   help="comma-separated measures the server also accounts (and shows in /v1/account) beside the "
                        "one it prices with; each costs time per batch (default: none)")


def add_serve_admin_arguments(sub) -> None:
    p = sub.add_parser("serve-admin",
                       help="the server's key and users: init | add-user NAME | list-users | revoke NAME")
    p.add_argument("action", choices=["init", "add-user", "list-users", "revoke"], help="what to do")
    p.add_argument("name", nargs="?", default=None, help="the user (add-user, revoke)")
    p.add_argument("--group", default=None,
                   help="add-user: the account the user is charged to; keys of one organisation share it "
                        "(default: the user's own)")
    add_server_state(p)


def add_query_arguments(sub) -> None:
    p = sub.add_parser("query", help="send one .npy batch to a server and print the answers")
    p.add_argument("--server", required=True, help="the server's URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--api_key", default=None, help="(default: $POW_API_KEY)")
    p.add_argument("--input", required=True, help=".npy array of images (N, C, H, W), uint8 or floats in [0, 1]")
    p.add_argument("--workers", type=number(int, 1, 1024), default=None, help="solver processes (default: all cores)")
    p.add_argument("--out", default=None, help="also save the answers here as .npy (default: print only)")
