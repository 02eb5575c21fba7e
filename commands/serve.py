"""serve, serve-admin and query: the guarded prediction API from the command line."""
from __future__ import annotations

import ipaddress
import logging
import os
import sys
from pathlib import Path

import numpy as np

from common.errors import UserError

log = logging.getLogger(__name__)
API_KEY_ENV = "POW_API_KEY"


def check_serve(s):
    """The settings' own errors, before any file is opened or made; returns the calibrator."""
    from pow import calibration
    from privacy.accountants import cost_column

    if s.puzzle == "hashcash":
        raise UserError("the server issues signed sha256 or scrypt challenges; pass --puzzle scrypt or sha256")
    if not s.calibration:
        raise UserError("serve needs --calibration: a legitimate user's log.csv (a standard run's) to price against")
    if s.calibration_mode != "relative":
        raise UserError("the server prices each batch after it has seen it, with --calibration_mode relative (the "
                        "paper's mode prices 1,000-query steps, which keys can split); drop --calibration_mode paper")
    calibration.QueryPriceConfig.of(s.as_dict()).checked()
    for measure in log_measures(s):
        cost_column(measure)
    return calibration.create(calibration.CalibrationConfig.of(s.as_dict()),
                              calibration.load_baseline(s.calibration, cost_measure=s.cost_measure))


def log_measures(s) -> list:
    """The measures the server accounts: the one it prices with, and --log_costs."""
    extra = [m for m in str(s.log_costs or "").split(",") if m]
    return [s.cost_measure, *[m for m in extra if m != s.cost_measure]]


LEGIT_CHUNK = 256  # held-out images per forward pass when the legitimate per-query costs are measured


def legit_costs(victim, images, make_ledger, column: str):
    """Each held-out image's own cost under the priced measure (the legitimate per-query distribution)."""
    import numpy as np

    parts = []
    for start in range(0, len(images), LEGIT_CHUNK):
        x = images[start:start + LEGIT_CHUNK]
        parts.append(np.asarray(make_ledger().add(victim.log_probs(x), images=x)[column], dtype=np.float64))
    return np.concatenate(parts)


def shared_pricer(s, store, workers: int):
    """The puzzle pricer every replica on `store` shares: --timing_table measured sets it (the operator's
    table); live measures this machine's solver only when the store holds none yet, and the first
    replica's measurement is kept for all."""
    import json

    from pow.solver import profile_solver
    from pow.timing import PuzzlePricer, make_pricer

    name = f"timing:{s.puzzle}:{s.pow_subs}"

    def make():
        return make_pricer(s.puzzle, table=s.timing_table, solver="python", workers=workers, timing_csv=s.timing_csv,
                           measure=lambda kind, w: profile_solver(kind, workers=w, subs=s.pow_subs, seconds=1.0))

    if s.timing_table == "measured":
        pricer = make()
        store.set_shared(name, json.dumps({"rate": pricer.rate, "overhead_s": pricer.overhead_s,
                                           "source": pricer.source}))
        return pricer
    stored = store.shared_value(name)
    if stored is None:
        pricer = make()
        stored = store.shared(name, json.dumps({"rate": pricer.rate, "overhead_s": pricer.overhead_s,
                                                "source": pricer.source}))
    value = json.loads(stored)
    return PuzzlePricer(s.puzzle, rate=value["rate"], overhead_s=value["overhead_s"],
                        source=f"shared ({value['source']})")


def build_service(s, store, key: bytes, *, check_solution=None, puzzle_pricer=None):
    """The PredictionService for the settings: victim, ledger factory, split-proof and puzzle pricers."""
    import json

    import torch

    from common.runtime import resolve_device
    from data.registry import load_splits
    from models.checkpoint import load_victim
    from models.oracle import Victim
    from models.teachers import load_teachers
    from pow import calibration
    from pow.solver import default_workers
    from privacy import accountants
    from server.service import PredictionService, ServiceConfig, per_query_column

    calibrator = check_serve(s)
    column = accountants.cost_column(s.cost_measure)
    device = resolve_device(s.device)
    splits = load_splits(s.dataset, s.data_dir)
    model, _ = load_victim(s.victim_path, splits.spec, architecture=s.victim_arch, device=device)
    victim = Victim(model, device=device, output=s.victim_output)
    teachers, pate_sigma = None, None
    if s.cost_measure in accountants.PATE_MEASURES:
        teachers, _ = load_teachers(s.teachers_path, splits.spec, device=device)
        pate_sigma = accountants.pate_sigma(len(teachers), s.pate_sigma)
    make_ledger = accountants.ledger_factory(
        victim.representations(splits.victim_x), splits.victim_y, num_classes=splits.spec.num_classes, k=s.k,
        sigma=s.sigma, delta=s.delta, cap=bool(s.cap_rdp), conversion=s.rdp_conversion, seed=s.seed,
        ensemble_votes=teachers.votes if teachers is not None else None, pate_sigma=pate_sigma,
        measures=log_measures(s))
    columns = list(make_ledger().columns)
    if json.loads(store.shared("ledger", json.dumps(columns))) != columns:
        raise UserError(f"{store.describe} keeps accounts of the costs {store.shared('ledger', '')}, not {columns}; "
                        f"serve it with the --cost_measure and --log_costs it was made with, or give a new --state")
    with torch.no_grad():  # not set_grad_enabled(False): sybil and frontier train attacks in this thread after
        held_out = legit_costs(victim, splits.eval_x, make_ledger, per_query_column(column))
    weights = calibration.QueryWeights(held_out, max_weight=calibrator.max_factor / calibrator.budget,
                                       config=calibration.QueryPriceConfig.of(s.as_dict()))
    pricer = calibration.SplitProofPricer(calibrator, weights, account_factor=s.account_factor,
                                          anonymous=bool(s.anonymous))
    puzzle_pricer = puzzle_pricer or shared_pricer(s, store, s.workers or default_workers())
    spec = splits.spec
    service = PredictionService(
        victim=victim, item_shape=(spec.channels, spec.size, spec.size), make_ledger=make_ledger,
        pricer=pricer, puzzle_pricer=puzzle_pricer, store=store, key=key, check_solution=check_solution,
        config=ServiceConfig(puzzle=s.puzzle, subs=s.pow_subs, max_batch=s.max_batch, ttl_s=s.ttl_s,
                             cost_column=column, rate=s.rate, burst=s.burst, anonymous=bool(s.anonymous)))
    return service, {"dataset": s.dataset, "puzzle": s.puzzle, "cost_measure": s.cost_measure,
                     "calibration": "relative, per query", "output": s.victim_output, "max_batch": s.max_batch,
                     "anonymous": bool(s.anonymous), "solve_rate": puzzle_pricer.rate}


def body_limit(spec_shape: tuple, max_batch: int) -> int:
    """The largest valid predict body: float32 inputs of a full batch, base64, plus the solution."""
    return int(max_batch * np.prod(spec_shape) * 4 * 4 / 3) + 256 * 1024


ROUTES_PER_CORE = 2  # request threads per core, by default


def size_threads(threads: int | None) -> tuple:
    """(route threads, torch threads per route). By default twice the cores, one torch thread each: a
    route waiting on its commit's fsync, or for its next request, leaves a core to another (on 2 cores
    this served 70% of bare inference's requests/s where one route per core served 63%)."""
    import torch

    cores = os.cpu_count() or 1
    threads = threads or ROUTES_PER_CORE * cores
    per = max(1, cores // threads)
    torch.set_num_threads(per)
    return threads, per


def serve(s) -> tuple:
    """Run the API with uvicorn until interrupted."""
    import uvicorn

    from server.app import MAX_HEAD_BYTES, create_app, guarded_protocol
    from server.keys import server_key
    from server.store import open_store

    key = server_key(s.key_file)
    check_serve(s)
    sock = _bind(s.host, s.port)  # a port in use fails here, before any file is opened or made
    try:
        store = open_store(s.state)
        try:
            service, describe = build_service(s, store, key)
            threads, per = size_threads(s.threads)
            app = create_app(service, max_body_bytes=body_limit(service.item_shape, s.max_batch), threads=threads,
                             describe=describe)
            if not _loopback(s.host):
                print(f"warning: listening on {s.host}, not loopback: put a TLS proxy in front, since API keys and "
                      f"answers travel in clear", file=sys.stderr)
            print(f"serving {s.dataset} on http://{s.host}:{s.port} (state {store.describe}, {threads} threads x "
                  f"{per} torch threads); docs at /docs", file=sys.stderr, flush=True)
            server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, http=guarded_protocol(),
                                                   h11_max_incomplete_event_size=MAX_HEAD_BYTES))
            server.run(sockets=[sock])
        finally:
            store.close()
    finally:
        sock.close()
    return None, "server stopped"


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _bind(host: str, port: int):
    """A listening socket on host:port; a UserError when it cannot be had."""
    import socket

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
    from server.keys import check_new_key_file, hash_api_key, init_key_file, new_api_key
    from server.store import open_store
    from pow.puzzles import valid_user

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


def api_key(s) -> str:
    key = s.api_key or os.environ.get(API_KEY_ENV, "")
    if not key:
        raise UserError(f"no API key: pass --api_key or set ${API_KEY_ENV} (the operator makes one with: "
                        f"python main.py serve-admin add-user NAME)")
    return key


def query(s) -> tuple:
    """Send the inputs of one .npy file to a server; print (and with --out, save) the answers."""
    from common.io import atomic_write_bytes, check_outputs
    from server.client import ApiClient

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
    with ApiClient(s.server, api_key(s), workers=s.workers) as client:
        answers = client.predict(x)
        account = client.account()
    if s.out:
        import io
        buffer = io.BytesIO()
        np.save(buffer, answers, allow_pickle=False)
        atomic_write_bytes(s.out, buffer.getvalue())
    text = (f"answers: {answers.tolist() if answers.ndim == 1 else answers.round(4).tolist()}\n"
            f"# {len(x)} inputs, PoW {client.pow_time_s:.3f} s, server {client.wait_time_s:.3f} s; account "
            f"{account['queries']} queries, next batch ~{account['next']['seconds']:.3f} s of PoW")
    return answers, text


def remote_oracle(s):
    """(RemoteOracle, settings without the API key) for extract --server."""
    from server.client import ApiClient, RemoteOracle

    client = ApiClient(s.server, api_key(s), workers=s.workers)
    return RemoteOracle(client, output=s.victim_output), s.replace(api_key=None)
