"""``stemify worker --autoscale MIN:MAX``: a supervisor of ``stemify worker`` child processes,
as many as :func:`stemify.worker.autoscale.decide` wants from the store's backlog.

Which children are busy: the workers table (each child's heartbeat row carries its pid and
its running jobs) says which ones look idle, and the child itself decides. The supervisor
sends a candidate ``RETIRE_SIGNAL``; the child stops only if no job runs in it, and the same
lock decides whether it takes a new message, so a job that started a moment after the row
was written is never cut off (a busy child just ignores the request). SIGTERM stays "stop,
finishing or handing back the job" and is what the supervisor's own SIGTERM sends to all.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta

from stemify.clock import now_utc
from stemify.observability.metrics import Metrics
from stemify.services import Services
from stemify.worker.autoscale import Decision, Observation, Policy, decide

log = logging.getLogger(__name__)

RETIRE_SIGNAL = signal.SIGUSR1
RETIRE_TIMEOUT_S = 10.0  # a child that has not gone by then was busy: it stays in the pool
DRAIN_EXTRA_S = 60.0  # on top of the grace period: the hand-back and the process's exit
PR_SET_PDEATHSIG = 1


@dataclass
class Child:
    process: subprocess.Popen[bytes]
    slot: int  # 0..MAX-1; with CUDA, its GPU
    started: float
    retiring_since: float | None = None
    stopping: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass
class RestartBackoff:
    """Restart delay after children that die soon after their start: doubling, capped."""

    base_s: float
    stable_s: float
    crashes: int = 0
    not_before: float = 0.0

    def exited(self, lived_s: float, now: float) -> float:
        if lived_s >= self.stable_s:
            self.crashes = 0  # it ran a while: its replacement starts at once
            return 0.0
        self.crashes += 1
        delay: float = self.base_s * 2.0 ** min(self.crashes - 1, 6)
        self.not_before = now + delay
        return delay


# Looked up here, in the parent: between fork and exec the child only calls it (loading a
# library there could wait forever on a lock another thread of the parent held at the fork).
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM (a drain) when the supervisor dies, even by SIGKILL."""
    _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Supervisor:
    services: Services
    policy: Policy
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)
    children: list[Child] = field(default_factory=list)

    def __post_init__(self) -> None:
        settings = self.services.settings
        self.metrics: Metrics = self.services.metrics
        self.stop = threading.Event()
        self.backoff = RestartBackoff(settings.autoscale_backoff_s, settings.autoscale_stable_s)
        self._last_arrival = time.monotonic()
        self._last_backlog = 0
        self._hostname = socket.gethostname()

    # ---- the loop ---------------------------------------------------------------------------

    def run(self) -> int:
        tick = self.services.settings.autoscale_tick_s
        while not self.stop.is_set():
            try:
                self.tick()
            except Exception:  # a store hiccup must not end the pool: next tick
                log.exception("autoscaler tick failed")
            self.stop.wait(tick)
        return self.drain()

    def tick(self) -> Decision:
        now = time.monotonic()
        self._reap(now)
        seen = self.observe(now)
        decision = decide(seen, self.policy)
        self.metrics.autoscaler_desired.set(decision.desired)
        direction = decision.direction(seen.children)
        acted = 0
        if direction == "up":
            acted = self._grow(decision.desired - seen.children, decision.desired, now)
        elif direction == "down":
            acted = self._retire(seen.children - decision.desired, now)
        if direction is not None:
            # One line per decision acted on; one held back (backoff, no idle child yet) is
            # taken again next tick.
            log.log(
                logging.INFO if acted else logging.DEBUG,
                "autoscaler: %s from %d to %d children (%s; queued %d, running %d, oldest "
                "queued %.0f s, %.0f s since the last arrival)%s",
                direction, seen.children, seen.children + (acted if direction == "up" else -acted),
                decision.reason, seen.queued, seen.running, seen.oldest_queued_age_s or 0.0,
                seen.since_arrival_s, "" if acted else ": held back",
            )  # fmt: skip
            if acted:
                self.metrics.autoscaler_events.labels(direction, decision.reason).inc()
        self.metrics.autoscaler_current.set(len(self.children))
        return decision

    def observe(self, now: float) -> Observation:
        stats = self.services.store.queue_stats(now_utc())
        backlog = stats.queued + stats.running
        if stats.queued > 0 or backlog > self._last_backlog:
            self._last_arrival = now
        self._last_backlog = backlog
        return Observation(
            queued=stats.queued,
            running=stats.running,
            oldest_queued_age_s=stats.oldest_queued_age_s,
            children=len([c for c in self.children if c.retiring_since is None]),
            since_arrival_s=now - self._last_arrival,
        )

    # ---- children ---------------------------------------------------------------------------

    def _reap(self, now: float) -> None:
        for child in list(self.children):
            code = child.process.poll()
            if code is None:
                if child.retiring_since is not None and now - child.retiring_since > (
                    RETIRE_TIMEOUT_S
                ):
                    child.retiring_since = None  # it was busy after all: keep it
                continue
            self.children.remove(child)
            if code == 0 and (child.retiring_since is not None or child.stopping):
                log.info("worker child %d retired", child.pid)
                continue
            delay = self.backoff.exited(now - child.started, now)
            log.warning(
                "worker child %d exited with %s after %.0f s; its job, if any, is re-run by the "
                "reconciler; replacement %s", child.pid, code, now - child.started,
                f"in {delay:.1f} s (it exited soon after its start)" if delay else "now",
            )  # fmt: skip

    def _grow(self, count: int, desired: int, now: float) -> int:
        if now < self.backoff.not_before:
            return 0
        for _ in range(count):
            self.children.append(self._spawn(desired, now))
        return count

    def _spawn(self, desired: int, now: float) -> Child:
        settings = self.services.settings
        used = {c.slot for c in self.children}
        slot = min(set(range(self.policy.maximum + len(used))) - used)
        threads = max(1, self.cores // max(1, desired))
        env = {**os.environ, "STEMIFY_WORKER_METRICS_PORT": "0"}  # the supervisor serves them
        if settings.device.startswith("cuda"):
            # One child per GPU: each sees its own as cuda:0.
            env.update(CUDA_VISIBLE_DEVICES=str(slot), STEMIFY_DEVICE="cuda")
        args = [sys.executable, "-m", "stemify.cli.main", "worker", "--threads", str(threads),
                "--concurrency", str(self.policy.concurrency)]  # fmt: skip
        process = subprocess.Popen(args, env=env, preexec_fn=_die_with_parent)
        log.info("worker child %d started (slot %d, %d torch threads)", process.pid, slot, threads)
        return Child(process, slot, now)

    def _idle_pids(self) -> set[int]:
        """Children whose last heartbeat says no job runs in them (a hint: the child decides)."""
        settings = self.services.settings
        seen_after = now_utc() - timedelta(seconds=settings.heartbeat_timeout_s)
        return {
            w.pid
            for w in self.services.workers.alive(seen_after)
            if w.hostname == self._hostname and w.running == 0
        }

    def _retire(self, count: int, now: float) -> int:
        idle = self._idle_pids()
        # The newest first: the oldest children have their models loaded the longest.
        candidates = [c for c in reversed(self.children) if c.retiring_since is None]
        chosen = [c for c in candidates if c.pid in idle][:count]
        for child in chosen:
            child.retiring_since = now
            child.process.send_signal(RETIRE_SIGNAL)
        return len(chosen)

    def drain(self) -> int:
        """SIGTERM every child (each finishes its job within the grace period or hands it
        back) and wait for them all; 0 when every one stopped by itself."""
        log.info("autoscaler stopping: draining %d worker children", len(self.children))
        for child in self.children:
            child.stopping = True
            child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.services.settings.shutdown_grace_s + DRAIN_EXTRA_S
        status = 0
        for child in self.children:
            try:
                code = child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker child %d did not stop: killed (its job is re-run)", child.pid)
                child.process.kill()
                code = child.process.wait()
                status = 1
            log.info("worker child %d stopped (exit %s)", child.pid, code)
        self.children.clear()
        self.metrics.autoscaler_current.set(0)
        self.metrics.autoscaler_desired.set(0)
        return status
