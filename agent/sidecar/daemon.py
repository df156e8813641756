"""``infermeter run``: the agent under APScheduler, until SIGTERM or Ctrl-C.

The signal handler only sets an event; the main thread then shuts the
scheduler down with ``wait=True`` (a running flush finishes), flushes what
the last ticks attributed, closes the store and returns 0. Each job runs at
most one instance at a time and coalesces missed runs: a slow tick is
skipped, never queued.

When the final flush cannot write (the database went away, the disk is
full), the batches still held go to the spool (``store.spool``) and the exit
code is ``EXIT_SPOOLED`` (3); if the spool cannot be written either, they
are lost, the log says how much, and the exit code is ``EXIT_LOST`` (4). The
next start writes a spool before its first tick, then deletes it; a spool
the store still refuses stays on disk, and its batches are held and retried
like any other until the store takes them.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from apscheduler.schedulers.background import BackgroundScheduler

from infermeter.config import Config, data_dir, default_sqlite_url
from infermeter.errors import StoreError
from infermeter.plugin_manager import PluginManager
from infermeter.sidecar.agent import Agent
from infermeter.store import migrate
from infermeter.store.engine import open_engine, redact, sqlite_path
from infermeter.store.lock import StoreLock
from infermeter.store.private_files import private_dir
from infermeter.store.spool import read_spool, remove_spool, set_aside, spool_path, write_spool
from infermeter.store.writer import FlushBatch, Store

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_SPOOLED = 3  # the final flush could not write: its batches are in the spool
EXIT_LOST = 4  # nor could the spool be written: those batches are lost (the log says how many)


@dataclass(frozen=True, slots=True)
class Job:
    name: str
    period_s: float
    run: Callable[[], object]


def open_store(config: Config, lock: bool) -> tuple[Store, StoreLock | None]:
    """Connect, take the single-writer lock, refuse a newer schema, migrate."""
    url = config.store_url
    is_default = url == default_sqlite_url()
    path = sqlite_path(url)
    if path is not None and is_default:
        private_dir(path.parent)  # 0700: the store holds every target's command line
    store_lock = None
    if lock and path is not None:
        if not path.parent.is_dir():
            raise StoreError(f"cannot open database {path}: folder {path.parent} does not exist")
        store_lock = StoreLock(path)
        store_lock.acquire()
    try:
        engine = open_engine(url, warn_public=lock)
        migrate.check_schema_known(engine)
        if migrate.needs_upgrade(engine):
            before = migrate.current_revision(engine)
            after = migrate.upgrade(engine)
            log.info("store %s migrated from %s to %s", redact(url), before or "empty", after)
    except BaseException:
        if store_lock is not None:
            store_lock.release()
        raise
    return Store(engine, config.host), store_lock


def jobs_for(agent: Agent, config: Config) -> list[Job]:
    return [
        Job("tick", config["agent.tick_s"], agent.tick),
        Job("flush", config["agent.flush_s"], agent.flush),
        Job("rollup", config["agent.rollup_s"], agent.rollup),
        Job("retention", config["agent.retention_s"], agent.prune),
        Job("recommend", config["agent.recommend_s"], agent.recommend),
    ]


def spool_file(config: Config) -> Path:
    """Where this host's agent spools the batches its final flush could not write."""
    configured = str(config["store.spool_dir"])
    directory = Path(configured).expanduser() if configured else data_dir()
    return spool_path(directory, config.host, config.store_url)


def run_daemon(config: Config, pm: PluginManager, stop: threading.Event | None = None) -> int:
    """Run the agent until ``stop`` (or SIGTERM, SIGINT); the exit code (EXIT_*)."""
    stop = stop or threading.Event()
    store, store_lock = open_store(config, lock=True)
    agent = Agent(config, pm, store)
    spool = spool_file(config)
    code = EXIT_OK
    scheduler = BackgroundScheduler(
        job_defaults={"max_instances": 1, "coalesce": True}, timezone="UTC"
    )
    try:
        agent.start()
        write_spooled(agent, spool)
        for job in jobs_for(agent, config):
            scheduler.add_job(
                job.run,
                "interval",
                seconds=job.period_s,
                id=job.name,
                name=job.name,
                misfire_grace_time=max(1, int(job.period_s)),
                next_run_time=_first_run(job),
            )
        _install_signal_handlers(stop)
        scheduler.start()
        log.info(
            "infermeter agent running on host %s, store %s, plugins: %s",
            config.host,
            redact(config.store_url),
            ", ".join(p.name for p in pm.describe()) or "none",
        )
        while not stop.wait(0.5):
            pass
        log.info("stopping: finishing running jobs")
        scheduler.shutdown(wait=True)
        written = agent.flush(final=True)
        code = spool_what_is_left(agent, spool, config)
        if code == EXIT_OK:
            try:  # the last word on what was refused or shed, for `status`
                agent.save_counts()
            except Exception as e:
                log.warning("could not store the agent's counters: %s", e)
        log.info("final flush wrote %d shares; store closed", written)
    finally:
        if scheduler.running:
            scheduler.shutdown(wait=False)
        agent.close()
        store.close()
        if store_lock is not None:
            store_lock.release()
    return code


def write_spooled(agent: Agent, path: Path) -> None:
    """Before the first tick: write what the last run spooled, then delete the spool."""
    if not path.exists():
        return
    try:
        batches = read_spool(path)
    except StoreError as e:
        aside = set_aside(path)
        log.error("%s; moved to %s, nothing from it written", e, aside)
        return
    taken = agent.write_spooled(batches)
    if taken == len(batches):
        remove_spool(path)
        log.info("wrote the %d batches spooled in %s and deleted it", taken, path)
    else:
        log.warning(
            "the store refused %d of the %d batches spooled in %s: the spool stays, "
            "and they are held and retried with the next flushes",
            len(batches) - taken,
            len(batches),
            path,
        )


def spool_what_is_left(agent: Agent, path: Path, config: Config) -> int:
    """After the final flush: spool the batches the store did not take; the exit code."""
    left = agent.unwritten()
    if not left:
        remove_spool(path)  # a spool this run started with is all stored now
        return EXIT_OK
    what = _describe(left)
    try:
        write_spool(path, left, config.host, config.store_url)
    except StoreError as e:
        log.error("the final flush could not write %s, and they are lost: %s", what, e)
        return EXIT_LOST
    log.error(
        "the final flush could not write %s: spooled to %s, written by the next start",
        what,
        path,
    )
    return EXIT_SPOOLED


def _describe(batches: list[FlushBatch]) -> str:
    shares = sum(len(b.shares) for b in batches)
    calls = sum(len(b.calls) for b in batches)
    return f"{len(batches)} batches ({shares} shares, {calls} calls)"


def _first_run(job: Job) -> datetime:
    # Tick at once (the first read only sets the meters' baselines); the
    # others wait one period so a short run does not roll up an empty store.
    delay = 0.0 if job.name == "tick" else job.period_s
    return datetime.fromtimestamp(time.time() + delay, tz=UTC)


def _install_signal_handlers(stop: threading.Event) -> None:
    if threading.current_thread() is not threading.main_thread():
        return

    def handle(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
