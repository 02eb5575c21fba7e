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
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing import resource_tracker
from multiprocessing.connection import wait

import uvicorn

from common.errors import UserError
from common.process import die_with
from server.app import MAX_HEAD_BYTES, create_app, guarded_protocol
from server.build import DeploymentConfig, body_limit, build_service, size_threads
from server.store import open_store

STOP_GRACE_S = 30.0  # a stopping worker finishes its requests in this time, or is killed
RESTART_PAUSE_S = 0.5  # a worker that died is started again after this pause (unless all are stopping)
MAX_RESTART_PAUSE_S = 30.0  # the pause doubles with each restart that dies before it serves, up to this
BEAT_S = 1.0  # a serving worker's event loop writes the time into its shared beat this often
START_TIMEOUT_S = 300.0  # a worker that has not served this long after its start is killed (and restarted)
STOPS = (signal.SIGINT, signal.SIGTERM)  # what stops the server; blocked in a worker until it is in its own group


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
                self.beating = asyncio.get_running_loop().create_task(self._beat())  # held: not collected
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
    """N workers on one socket: started, watched, restarted when they die or fall silent, stopped together.

    After the first start each worker is starting, serving or down (waiting out its restart pause), and
    one loop watches them all, so a worker that hangs while it starts holds up no other's restart.
    `clock` must read the clock the workers beat with (CLOCK_MONOTONIC is one per machine)."""

    def __init__(self, sock, recipe, processes: int, *, timeout_s: float, start_timeout_s: float = START_TIMEOUT_S,
                 context=None, clock=time.monotonic):
        for name, value, least in (("worker timeout", timeout_s, 2 * BEAT_S), ("start timeout", start_timeout_s, 1)):
            if not (math.isfinite(value) and value >= least):
                raise UserError(f"{name} {value} s: give at least {least:g} s (a worker beats every {BEAT_S:g} s)")
        self.sock, self.recipe, self.processes = sock, recipe, processes
        self.timeout_s, self.start_timeout_s = timeout_s, start_timeout_s
        self.ctx = context or multiprocessing.get_context("spawn")
        self.clock = clock
        # each worker's pipe, its read end here: (worker index, its pid, None once it serves | its UserError's
        # message). Pipes, not a Queue: a Queue's semaphores are left to the resource tracker to complain
        # about when this process is SIGKILLed
        self.readers: dict = {}
        self.workers: dict = {}
        self.beats: dict = {}  # worker index -> its shared beat: the clock's time of its last beat; 0 before
        self.state: dict = {}  # worker index -> "starting" | "serving" | "down"
        self.since: dict = {}  # worker index -> when it entered its state (down: when it starts again)
        self.pause: dict = {}  # worker index -> the pause before its last restart
        self.stopping = threading.Event()

    def run(self, *, on_ready=None) -> None:
        # the supervisor's own handlers, kept until every worker is gone: SIGTERM from a service manager or
        # SIGINT from Ctrl-C stops every worker with one SIGTERM; a second one while stopping kills them
        previous = {s: signal.signal(s, self._on_stop) for s in STOPS}
        try:
            # spawn's resource tracker, started here and not by the first worker's start: starting it
            # unblocks SIGINT and SIGTERM, which _start holds back while it spawns a worker
            resource_tracker.ensure_running()
            for index in range(self.processes):
                self._start(index)
            if self._await_first_start() and on_ready is not None:
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
        reader, writer = self.ctx.Pipe(duplex=False)
        process = self.ctx.Process(target=worker_main,
                                   args=(self.recipe, self.sock, index, writer, os.getpid(), beat),
                                   name=f"serve-worker-{index}", daemon=False)
        # the worker starts with SIGINT and SIGTERM blocked (the mask survives fork and exec): until it has a
        # process group of its own, a Ctrl-C meant for this process would cut its imports in half
        held = signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
            writer.close()  # the worker holds the write end: its exit ends the pipe
        if self.readers.get(index) is not None:
            self.readers[index].close()
        self.workers[index], self.beats[index], self.readers[index] = process, beat, reader
        self.state[index], self.since[index] = "starting", self.clock()
        self.pause.setdefault(index, RESTART_PAUSE_S)

    def _await_first_start(self) -> bool:
        """Until every worker serves: True; False when told to stop meanwhile. A worker's error, death or
        silence past the start timeout stops the server: a deployment that cannot start."""
        while any(state == "starting" for state in self.state.values()):
            if self.stopping.is_set():
                return False
            events, _ = self._receive(BEAT_S)
            for index, _, error in events:  # nothing has been restarted yet: each is from its worker
                if error is not None:
                    raise UserError(error)
                self.state[index] = "serving"
            for index, process in self.workers.items():
                if self.state[index] != "starting":
                    continue
                if process.exitcode is not None:
                    if self.stopping.is_set():  # it died of the signal that stops this process too
                        return False
                    raise UserError(f"serve worker {index} {_ended(process.exitcode)} while starting" +
                                    ("; its output is above" if process.exitcode > 0 else ""))
                if self.clock() - self.since[index] > self.start_timeout_s:
                    raise UserError(f"serve worker {index} did not start within {self.start_timeout_s:g} s "
                                    f"(stopped or hung)")
            self.kill_silent()  # the workers that already serve are watched meanwhile
        return True

    def _watch(self) -> None:
        """Restart each worker that dies, or falls silent, until SIGTERM or Ctrl-C."""
        while not self.stopping.is_set():
            live = {p.sentinel: i for i, p in self.workers.items() if self.state[i] != "down"}
            events, ready = self._receive(BEAT_S, also=live)
            if not self.stopping.is_set():
                self.step([live[sentinel] for sentinel in ready], events)

    def _receive(self, timeout: float, also=()) -> tuple:
        """(the events the workers sent, which of `also` are ready), waiting at most `timeout` seconds for
        either. A pipe whose worker has exited is closed and dropped."""
        pipes = {reader: index for index, reader in self.readers.items() if reader is not None}
        if not pipes and not also:
            self.stopping.wait(timeout)
            return [], []
        ready = wait([*pipes, *also], timeout=timeout)
        events = []
        for reader in (r for r in ready if r in pipes):
            try:
                while reader.poll():
                    events.append(reader.recv())
            except (EOFError, OSError):  # its worker has exited (its death is seen by its sentinel)
                reader.close()
                self.readers[pipes[reader]] = None
        return events, [r for r in ready if r not in pipes]

    def step(self, dead: list, events: list) -> None:
        """One turn of the watch: note the workers that now serve, kill the silent ones and those that
        start for too long, schedule a restart for each that died, and start those whose pause is over.
        A worker that dies serving starts again after RESTART_PAUSE_S; one that dies before it serves
        after twice its last pause, up to MAX_RESTART_PAUSE_S (the store may be back by then)."""
        for index, pid, error in events:
            if pid == self.workers[index].pid and self.state[index] == "starting":
                if error is None:
                    self.state[index], self.pause[index] = "serving", RESTART_PAUSE_S
                else:
                    print(f"serve worker {index} cannot start: {error}", file=sys.stderr, flush=True)
        self.kill_silent()
        for index, process in self.workers.items():
            if (self.state[index] == "starting" and self.clock() - self.since[index] > self.start_timeout_s
                    and process.is_alive()):
                print(f"serve worker {index} did not start within {self.start_timeout_s:g} s (stopped or hung); "
                      f"killing it", file=sys.stderr, flush=True)
                process.kill()
        for index in dead:
            process = self.workers[index]
            process.join()  # it has exited: join reaps it
            pause = RESTART_PAUSE_S if self.state[index] == "serving" else min(2 * self.pause[index],
                                                                              MAX_RESTART_PAUSE_S)
            print(f"serve worker {index} {_ended(process.exitcode)}; starting it again", file=sys.stderr, flush=True)
            self.state[index], self.since[index], self.pause[index] = "down", self.clock() + pause, pause
        for index in sorted(self.workers):
            if self.state[index] == "down" and self.clock() >= self.since[index]:
                self._start(index)

    def kill_silent(self) -> list:
        """Kill each serving worker whose last beat is older than the timeout (its death then restarts it,
        as any death does); the indices killed."""
        killed = []
        for index, process in self.workers.items():
            last = self.beats[index].value
            if (self.state.get(index) == "serving" and last > 0 and self.clock() - last > self.timeout_s
                    and process.is_alive()):
                print(f"serve worker {index} has not answered for {self.clock() - last:.0f} s (stopped or hung); "
                      f"killing it", file=sys.stderr, flush=True)
                process.kill()
                killed.append(index)
        return killed

    def stop(self) -> None:
        """SIGTERM to every live worker (uvicorn finishes its requests; a stopped one is woken to hear it),
        then SIGKILL after STOP_GRACE_S."""
        self.stopping.set()
        for process in self.workers.values():
            if process.is_alive():
                process.terminate()
                with contextlib.suppress(OSError):
                    os.kill(process.pid, signal.SIGCONT)
        for process in self.workers.values():
            process.join(STOP_GRACE_S)
            if process.is_alive():
                process.kill()
                process.join()
        for reader in self.readers.values():
            if reader is not None:
                reader.close()


def _ended(code: int) -> str:
    """How a worker ended, from its exit code (negative: the signal that killed it)."""
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def worker_main(recipe, sock, index: int, report, parent: int, beat=None) -> None:
    """One worker: build the app, say so, serve until told to stop. A UserError is reported, not raised."""
    # a process group of its own: a terminal's Ctrl-C reaches the supervisor alone, which then stops each
    # worker with one SIGTERM (uvicorn takes a second signal as "drop the requests in flight"); the
    # supervisor started this process with SIGINT and SIGTERM blocked, and they are let in from here on
    os.setpgrp()
    die_with(parent)
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPS)  # a Ctrl-C held back meanwhile arrives here
        built = recipe()
    except UserError as exc:
        report.send((index, os.getpid(), str(exc)))
        sys.exit(2)
    except KeyboardInterrupt:  # a SIGINT for the whole group, held back until now, or one for this worker
        sys.exit(130)
    try:
        run_app(built.app, sock, on_started=lambda: report.send((index, os.getpid(), None)),
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
