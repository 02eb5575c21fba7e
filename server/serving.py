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
signal). Each serving worker's event loop beats once a second into shared memory; a worker silent for
--worker_timeout seconds (stopped with SIGSTOP, or hung) is killed and started again, as gunicorn does."""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import math
import multiprocessing
import os
import queue as queues
import signal
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import wait

import uvicorn

from common.errors import UserError
from server.app import MAX_HEAD_BYTES, create_app, guarded_protocol
from server.build import DeploymentConfig, body_limit, build_service, size_threads
from server.store import open_store

STOP_GRACE_S = 30.0  # a stopping worker finishes its requests in this time, or is killed
RESTART_PAUSE_S = 0.5  # a worker that died is started again after this pause (unless all are stopping)
MAX_RESTART_PAUSE_S = 30.0  # the pause doubles with each restart that dies before it serves, up to this
BEAT_S = 1.0  # a serving worker's event loop writes the time into its shared beat this often
STOPS = (signal.SIGINT, signal.SIGTERM)  # what stops the server; blocked in a worker until it is in its own group
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Built:
    """What a recipe gives a worker: the ASGI app, and what to close when it stops."""
    app: object
    close: object  # () -> None


def run_app(app, sock, *, on_started=None, beat=None) -> None:
    """uvicorn with the guarded protocol on `sock` until SIGINT/SIGTERM (or should_exit); once it serves,
    `beat()` runs on its event loop every BEAT_S seconds."""
    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)
            if beat is not None and self.started:
                self.beating = asyncio.get_running_loop().create_task(self._beat())
            if on_started is not None and self.started:
                on_started()

        async def _beat(self):
            while not self.should_exit:
                beat()
                await asyncio.sleep(BEAT_S)

    Server(uvicorn.Config(app, log_level="warning", access_log=False, http=guarded_protocol(),
                          h11_max_incomplete_event_size=MAX_HEAD_BYTES)).run(sockets=[sock])


def serve_socket(sock, recipe, *, processes: int = 1, worker_timeout_s: float | None = None, on_ready=None) -> None:
    """Serve `recipe()`'s app on `sock` in this process (processes 1) or in `processes` workers.

    `recipe` is a picklable callable returning a Built (it runs in each worker); `on_ready` runs here once
    every worker serves; a worker whose event loop is silent for `worker_timeout_s` is killed and replaced
    (required with several processes). Returns when the server stops; raises UserError when a worker
    cannot start."""
    if processes < 1:
        raise UserError(f"--processes {processes}: give 1 or more")
    if processes == 1:
        built = recipe()
        try:
            run_app(built.app, sock, on_started=on_ready)
        except KeyboardInterrupt:  # uvicorn stopped on Ctrl-C, then raised it again: the stop that was asked
            pass
        finally:
            built.close()
        return
    if worker_timeout_s is None:
        raise UserError("several server processes need a worker timeout (serve --worker_timeout)")
    Supervisor(sock, recipe, processes, timeout_s=worker_timeout_s).run(on_ready=on_ready)


class Supervisor:
    """N workers on one socket: started, watched, restarted when they die serving or fall silent, stopped
    together. `clock` must read the clock the workers beat with (CLOCK_MONOTONIC is one per machine)."""

    def __init__(self, sock, recipe, processes: int, *, timeout_s: float, context=None, clock=time.monotonic):
        if not (math.isfinite(timeout_s) and timeout_s >= 2 * BEAT_S):
            raise UserError(f"worker timeout {timeout_s} s: give at least {2 * BEAT_S:g} s (a worker beats every "
                            f"{BEAT_S:g} s)")
        self.sock, self.recipe, self.processes, self.timeout_s = sock, recipe, processes, timeout_s
        self.ctx = context or multiprocessing.get_context("spawn")
        self.clock = clock
        self.events = self.ctx.Queue()  # (worker index, its pid, None once it serves | its UserError's message)
        self.workers: dict = {}
        self.beats: dict = {}  # worker index -> its shared beat: the clock's time of its last beat; 0 before
        self.stopping = threading.Event()

    def run(self, *, on_ready=None) -> None:
        # the supervisor's own handlers, kept until every worker is gone: SIGTERM from a service manager or
        # SIGINT from Ctrl-C stops every worker with one SIGTERM; a second one while stopping kills them
        previous = {s: signal.signal(s, self._on_stop) for s in STOPS}
        try:
            for index in range(self.processes):
                self._start(index)
            if self._await_started(set(range(self.processes)), first=True) and on_ready is not None:
                on_ready()
            self._watch()
        finally:
            try:
                self.stop()
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler)

    def _on_stop(self, signum, frame) -> None:
        if self.stopping.is_set():  # asked again while stopping: no more grace
            for process in self.workers.values():
                if process.is_alive():
                    process.kill()
        self.stopping.set()

    def _start(self, index: int) -> None:
        beat = self.ctx.RawValue("d", 0.0)
        process = self.ctx.Process(target=worker_main,
                                   args=(self.recipe, self.sock, index, self.events, os.getpid(), beat),
                                   name=f"serve-worker-{index}", daemon=False)
        # the worker starts with SIGINT and SIGTERM blocked (the mask survives fork and exec): until it has a
        # process group of its own, a Ctrl-C meant for this process would cut its imports in half
        held = signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        self.workers[index], self.beats[index] = process, beat

    def _await_started(self, waiting: set, *, first: bool) -> bool:
        """Until each worker in `waiting` serves: True; False when told to stop meanwhile. At the first
        start a worker's error, or death, stops the server (a deployment that cannot start); a restarted
        worker that fails before it serves is started again, after a pause that doubles each time."""
        pause = RESTART_PAUSE_S
        while waiting:
            if self.stopping.is_set():
                return False
            try:
                index, pid, error = self.events.get(timeout=1.0)
            except queues.Empty:
                self.kill_silent()  # the workers that already serve are watched meanwhile
                for index in sorted(waiting):
                    code = self.workers[index].exitcode
                    if code is None:
                        continue
                    if self.stopping.is_set():  # it died of the signal that stops this process too
                        return False
                    if first:
                        raise UserError(f"serve worker {index} {_ended(code)} while starting" +
                                        ("; its output is above" if code > 0 else ""))
                    pause = self._restart(index, pause)
                continue
            if index not in waiting or pid != self.workers[index].pid:
                continue  # from a worker started before this one
            if error is None:
                waiting.discard(index)
            elif first:
                raise UserError(error)
            else:  # the deployment worked a while ago: its store may be back soon
                print(f"serve worker {index} cannot start: {error}", file=sys.stderr, flush=True)
                pause = self._restart(index, pause)
        return True

    def _restart(self, index: int, pause: float) -> float:
        """Start worker `index` again after `pause` (unless told to stop meanwhile); the next pause."""
        self.workers[index].join()  # it has exited: join reaps it
        print(f"serve worker {index} {_ended(self.workers[index].exitcode)}; starting it again", file=sys.stderr,
              flush=True)
        if not self.stopping.wait(pause):  # a worker that ends as the supervisor is told to stop stays down
            self._start(index)
        return min(2 * pause, MAX_RESTART_PAUSE_S)

    def kill_silent(self) -> list:
        """Kill each serving worker whose last beat is older than the timeout (its death then restarts it,
        as any death does); the indices killed."""
        killed = []
        for index, process in self.workers.items():
            last = self.beats[index].value
            if last > 0 and self.clock() - last > self.timeout_s and process.is_alive():
                print(f"serve worker {index} has not answered for {self.clock() - last:.0f} s (stopped or hung); "
                      f"killing it", file=sys.stderr, flush=True)
                process.kill()
                killed.append(index)
        return killed

    def _watch(self) -> None:
        """Restart each worker that dies, or falls silent, while serving, until SIGTERM or Ctrl-C."""
        while not self.stopping.is_set():
            self.kill_silent()
            sentinels = {p.sentinel: i for i, p in self.workers.items()}
            for ready in wait(list(sentinels), timeout=BEAT_S):
                if self.stopping.is_set():
                    return
                index = sentinels[ready]
                self._restart(index, RESTART_PAUSE_S)
                if not self._await_started({index}, first=False):
                    return

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


def worker_main(recipe, sock, index: int, events, parent: int, beat=None) -> None:
    """One worker: build the app, say so, serve until told to stop. A UserError is reported, not raised."""
    # a process group of its own: a terminal's Ctrl-C reaches the supervisor alone, which then stops each
    # worker with one SIGTERM (uvicorn takes a second signal as "drop the requests in flight"); the
    # supervisor started this process with SIGINT and SIGTERM blocked, and they are let in from here on
    os.setpgrp()
    _die_with(parent)
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPS)  # a Ctrl-C held back meanwhile arrives here
        built = recipe()
    except UserError as exc:
        events.put((index, os.getpid(), str(exc)))
        sys.exit(2)
    except KeyboardInterrupt:  # a SIGINT for the whole group, held back until now, or one for this worker
        sys.exit(130)
    try:
        run_app(built.app, sock, on_started=lambda: events.put((index, os.getpid(), None)),
                beat=None if beat is None else lambda: setattr(beat, "value", time.monotonic()))
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
