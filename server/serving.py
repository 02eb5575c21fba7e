"""Running the guarded app on a listening socket: in this process, or in several worker processes.

With --processes N, N worker processes share one socket and the kernel hands each new connection to one
of them. Each worker has its own interpreter lock, uvicorn event loop, request threads, service and store
connection, so the model's forward passes no longer wait on the event loop's Python work. What must agree
between them lives in the store, as it does between replicas: accounts, the spent set, sealed batches,
the timing table. What is per process, as it is per replica: the rate limiter (a key may reach N times
--rate, spread over connections) and the recent answering times a quote reads.

The supervisor (this process) starts the workers with the spawn method (no fork after torch's threads
exist), waits until each has built its service, restarts a worker that dies while serving, and stops
them all on Ctrl-C or SIGTERM. A worker that cannot build its service stops the whole server with the
worker's own message. Workers stop with their supervisor even if it is killed (Linux's parent-death
signal)."""
from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import queue as queues
import signal
import sys
import threading
from dataclasses import dataclass
from multiprocessing.connection import wait

import uvicorn

from common.errors import UserError
from server.app import MAX_HEAD_BYTES, create_app, guarded_protocol
from server.build import DeploymentConfig, body_limit, build_service, size_threads
from server.store import open_store

STOP_GRACE_S = 30.0  # a stopping worker finishes its requests in this time, or is killed
RESTART_PAUSE_S = 0.5  # a worker that died is started again after this pause (unless all are stopping)
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Built:
    """What a recipe gives a worker: the ASGI app, and what to close when it stops."""
    app: object
    close: object  # () -> None


def run_app(app, sock, *, on_started=None) -> None:
    """uvicorn with the guarded protocol on `sock` until SIGINT/SIGTERM (or should_exit)."""
    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)
            if on_started is not None and self.started:
                on_started()

    Server(uvicorn.Config(app, log_level="warning", access_log=False, http=guarded_protocol(),
                          h11_max_incomplete_event_size=MAX_HEAD_BYTES)).run(sockets=[sock])


def serve_socket(sock, recipe, *, processes: int = 1, on_ready=None) -> None:
    """Serve `recipe()`'s app on `sock` in this process (processes 1) or in `processes` workers.

    `recipe` is a picklable callable returning a Built (it runs in each worker); `on_ready` runs here once
    every worker serves. Returns when the server stops; raises UserError when a worker cannot start."""
    if processes < 1:
        raise UserError(f"--processes {processes}: give 1 or more")
    if processes == 1:
        built = recipe()
        try:
            run_app(built.app, sock, on_started=on_ready)
        finally:
            built.close()
        return
    Supervisor(sock, recipe, processes).run(on_ready=on_ready)


class Supervisor:
    """N workers on one socket: started, watched, restarted when they die serving, stopped together."""

    def __init__(self, sock, recipe, processes: int, *, context=None):
        self.sock, self.recipe, self.processes = sock, recipe, processes
        self.ctx = context or multiprocessing.get_context("spawn")
        self.events = self.ctx.Queue()  # (worker index, None when started | the UserError's message)
        self.workers: dict = {}
        self.stopping = threading.Event()

    def run(self, *, on_ready=None) -> None:
        # the supervisor's own handlers: SIGTERM from a service manager, SIGINT from Ctrl-C; either stops
        # every worker with one SIGTERM
        previous = {s: signal.signal(s, self._on_stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            for index in range(self.processes):
                self._start(index)
            self._await_started(set(range(self.processes)))
            if self.stopping.is_set():
                return
            if on_ready is not None:
                on_ready()
            self._watch()
        except KeyboardInterrupt:
            pass
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self.stop()

    def _on_stop(self, signum, frame) -> None:
        self.stopping.set()

    def _start(self, index: int) -> None:
        process = self.ctx.Process(target=worker_main, args=(self.recipe, self.sock, index, self.events, os.getpid()),
                                   name=f"serve-worker-{index}", daemon=False)
        process.start()
        self.workers[index] = process

    def _await_started(self, waiting: set) -> None:
        """Until each worker in `waiting` reports its service built; a worker's error or death stops all."""
        while waiting and not self.stopping.is_set():
            try:
                index, error = self.events.get(timeout=1.0)
            except queues.Empty:
                for index in sorted(waiting):
                    code = self.workers[index].exitcode
                    if code is not None:
                        raise UserError(f"serve worker {index} {_ended(code)} while starting; its output is "
                                        f"above")
                continue
            if error is not None:
                raise UserError(error)
            waiting.discard(index)

    def _watch(self) -> None:
        """Restart each worker that dies while serving, until SIGTERM or Ctrl-C."""
        while not self.stopping.is_set():
            sentinels = {p.sentinel: i for i, p in self.workers.items()}
            for ready in wait(list(sentinels), timeout=1.0):
                index = sentinels[ready]
                # a worker that ends as the supervisor is told to stop is not started again
                if self.stopping.wait(RESTART_PAUSE_S):
                    return
                self.workers[index].join()  # its sentinel is ready: it has exited, and join reaps it
                print(f"serve worker {index} {_ended(self.workers[index].exitcode)}; starting it again",
                      file=sys.stderr, flush=True)
                self._start(index)
                self._await_started({index})

    def stop(self) -> None:
        """SIGTERM to every live worker (uvicorn finishes its requests), then SIGKILL after STOP_GRACE_S."""
        self.stopping.set()
        for process in self.workers.values():
            if process.is_alive():
                process.terminate()
        for process in self.workers.values():
            process.join(STOP_GRACE_S)
            if process.is_alive():
                process.kill()
                process.join()
        self.events.close()


def _ended(code: int) -> str:
    """How a worker ended, from its exit code (negative: the signal that killed it)."""
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def _die_with(parent: int) -> None:
    """SIGTERM this process when `parent` dies (Linux); if it is already gone, stop now."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def worker_main(recipe, sock, index: int, events, parent: int) -> None:
    """One worker: build the app, say so, serve until told to stop. A UserError is reported, not raised."""
    # a process group of its own: a terminal's Ctrl-C reaches the supervisor alone, which then stops each
    # worker with one SIGTERM (uvicorn takes a second signal as "drop the requests in flight")
    os.setpgrp()
    _die_with(parent)
    try:
        built = recipe()
    except UserError as exc:
        events.put((index, str(exc)))
        sys.exit(2)
    except KeyboardInterrupt:  # a SIGINT sent to this worker alone (or a Ctrl-C before setpgrp above ran)
        sys.exit(130)
    try:
        run_app(built.app, sock, on_started=lambda: events.put((index, None)))
    except KeyboardInterrupt:  # a SIGINT sent to this worker alone: uvicorn has stopped, and so does it
        pass
    finally:
        built.close()


@dataclass(frozen=True)
class ServiceRecipe:
    """The guarded app of a deployment on the store at `state`; each worker builds its own from it."""
    config: DeploymentConfig
    state: str
    key: bytes
    threads: int | None = None
    processes: int = 1

    def __call__(self) -> Built:
        store = open_store(self.state)
        try:
            service, describe = build_service(self.config, store, self.key)
            threads, _ = size_threads(self.threads, self.processes)
            app = create_app(service, max_body_bytes=body_limit(service.item_shape, self.config.max_batch),
                             threads=threads, describe={**describe, "processes": self.processes})
        except BaseException:
            store.close()
            raise
        return Built(app, store.close)
