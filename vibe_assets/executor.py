"""``vibe_in_process``: Dagster's in-process executor, made to wait visibly and stop cleanly.

The code location's default executor and the executor of ``ingest_job`` and ``caption_job``:
one process per run, so each model loads once per run (the multiprocess executor loads it
once per step process: a 2-image folder took 44 s from the UI against 3.6 s from the CLI).

On top of :class:`dagster._core.executor.in_process.InProcessExecutor` (Dagster 1.13.27, pinned
in pyproject.toml), at the start of each run it records the run's worker in the run's tags and
cleans up dead runs of this host (:mod:`vibe_assets.runs`), and it replaces the pool-slot
waiting of Dagster's ``InstanceConcurrencyContext``, which in an in-process run

- busy-spins at 100 % of a core (``interval_to_next_pending_claim_check`` returns
  ``min([0, ...])``, never a positive sleep),
- says nothing for 5 minutes (``CONCURRENCY_CLAIM_MESSAGE_INTERVAL``), and
- never acts on Ctrl-C or SIGTERM (they are captured and only checked by the multiprocess
  executor),

with :class:`WatchfulConcurrencyContext`: it sleeps between claim attempts, logs what it waits
for every :data:`WAIT_LOG_SECONDS`, cleans up a holder that died meanwhile, and ends the run as
CANCELED on an interrupt, a cancel request of this process (:func:`vibe_assets.runs.request_cancel`)
or a termination request from the UI (run status CANCELING).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import dagster as dg
from dagster._core.definitions.executor_definition import IN_PROC_CONFIG
from dagster._core.errors import DagsterExecutionInterruptedError
from dagster._core.events import DagsterEvent, EngineEventData
from dagster._core.execution.api import ExecuteRunWithPlanIterable
from dagster._core.execution.context.system import PlanExecutionContext, PlanOrchestrationContext
from dagster._core.execution.context_creation_job import PlanExecutionContextManager
from dagster._core.execution.plan.execute_plan import inner_plan_execution_iterator
from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext
from dagster._core.execution.plan.plan import ExecutionPlan
from dagster._core.execution.retries import RetryMode
from dagster._core.execution.step_dependency_config import StepDependencyConfig
from dagster._core.executor.in_process import InProcessExecutor
from dagster._utils.interrupts import check_captured_interrupt

from vibe_assets.instance import optimize_storage
from vibe_assets.runs import cancel_requested, cleanup_dead_runs, record_worker

WAIT_LOG_SECONDS = 10.0
"""While a step waits for a pool slot, a log line says what it waits for at least this often."""
POLL_SECONDS = 0.5
"""Longest sleep of the run loop while waiting: how fast an interrupt is noticed."""
CLAIM_RETRY_SECONDS = 2.0
"""Longest time between two claim attempts (Dagster backs off to 15 s): how soon a freed slot is
taken. One claim attempt is one small SQL transaction."""
STATUS_POLL_SECONDS = 2.0
"""How often a waiting run re-reads its own status (a UI termination sets CANCELING)."""


def _ago(ts: float) -> str:
    return f"{time.strftime('%H:%M:%S', time.localtime(ts))}, {time.time() - ts:.0f} s ago"


class WatchfulConcurrencyContext(InstanceConcurrencyContext):
    """Dagster's instance concurrency context with idle, visible, interruptible waiting.

    Args:
        instance: the run's instance.
        dagster_run: the run.
        log: the run's log manager (lines reach the run's event log and the console).
    """

    def __init__(self, instance: dg.DagsterInstance, dagster_run: dg.DagsterRun, log: Any):
        super().__init__(instance, dagster_run)
        self._run = dagster_run
        self._log = log
        self._wait_started: dict[str, float] = {}
        self._last_wait_log: dict[str, float] = {}
        self._pool_of: dict[str, str] = {}
        self._last_status_poll = 0.0

    # -- claiming ----------------------------------------------------------------------------
    def claim(self, concurrency_key: str, step_key: str, step_priority: int = 0) -> bool:
        claimed = super().claim(concurrency_key, step_key, step_priority)
        now = time.time()
        if claimed:
            since = self._wait_started.pop(step_key, None)
            self._last_wait_log.pop(step_key, None)
            self._pool_of.pop(step_key, None)
            if since is not None:
                self._log.info(
                    f"{step_key}: got a slot in pool {concurrency_key!r} after waiting "
                    f"{now - since:.1f} s"
                )
            return True
        self._wait_started.setdefault(step_key, now)
        self._pool_of[step_key] = concurrency_key
        if step_key in self._pending_timeouts:  # retry soon: a freed slot is taken quickly
            self._pending_timeouts[step_key] = min(
                self._pending_timeouts[step_key], now + CLAIM_RETRY_SECONDS
            )
        self._report_waits()
        return False

    def _report_waits(self) -> None:
        """Log every waiting step whose last line is :data:`WAIT_LOG_SECONDS` old (or that
        has none yet)."""
        now = time.time()
        for step_key in list(self._pending_claims):
            pool = self._pool_of.get(step_key)
            if pool is None or now - self._last_wait_log.get(step_key, 0.0) < WAIT_LOG_SECONDS:
                continue
            self._last_wait_log[step_key] = now
            self._report_wait(pool, step_key)

    def _report_wait(self, pool: str, step_key: str) -> None:
        """Log what ``step_key`` waits for; clean up a holder whose worker died meanwhile."""
        cleaned = cleanup_dead_runs(self._instance, exclude=self._run_id, log_fn=self._log.warning)
        info = self._instance.event_log_storage.get_concurrency_info(pool)
        assigned = {
            (p.run_id, p.step_key): p.assigned_timestamp
            for p in info.pending_steps
            if p.assigned_timestamp is not None
        }
        holders = []
        for slot in info.claimed_slots:
            if slot.run_id == self._run_id:
                continue
            run = self._instance.get_run_by_id(slot.run_id)
            job = run.job_name if run else "?"
            status = run.status.value if run else "unknown"
            since = assigned.get((slot.run_id, slot.step_key))
            when = f", since {_ago(since.timestamp())}" if since else ""
            holders.append(f"run {slot.run_id} ({job}, {status}, step {slot.step_key}{when})")
        waited = time.time() - self._wait_started.get(step_key, time.time())
        held = "; ".join(holders) or "no run (freed meanwhile; claiming again)"
        limit = info.limit if info.limit is not None else "?"
        cleaned_note = f"; cleaned up {len(cleaned)} dead run(s)" if cleaned else ""
        self._log.info(
            f"{step_key}: waiting {waited:.0f} s for a slot in pool {pool!r} (limit {limit}), "
            f"held by {held}{cleaned_note}. Ctrl-C (or Terminate in the UI) cancels this run."
        )

    def interval_to_next_pending_claim_check(self) -> float:
        """Seconds to sleep before the next claim attempt: at least a short positive sleep, at
        most :data:`POLL_SECONDS` (interrupts are checked between sleeps).

        Dagster 1.13.27 returns ``min([0, ...])`` here, which is never positive, so an
        in-process run waiting for a slot never sleeps.
        """
        if not self._pending_claims:
            return 0.0
        now = time.time()
        due = [t - now for t in self._pending_timeouts.values()] or [POLL_SECONDS]
        return max(0.05, min(POLL_SECONDS, min(due)))

    # -- interrupting ------------------------------------------------------------------------
    def pending_claim_steps(self) -> list[str]:
        """The steps waiting for a slot; first, end the run if it was asked to stop, and log
        what the waiting steps wait for (:data:`WAIT_LOG_SECONDS`).

        The in-process run loop calls this once per iteration, also while it waits for a slot
        or for a retry, so an interrupt is acted on within :data:`POLL_SECONDS`.

        Raises:
            DagsterExecutionInterruptedError: an interrupt (SIGINT/SIGTERM captured by Dagster),
                a cancel request of this process, or the run's status is CANCELING.
        """
        self._raise_if_stopping()
        self._report_waits()  # checked every loop iteration: a line at least every 10 s
        return super().pending_claim_steps()

    def _raise_if_stopping(self) -> None:
        why = cancel_requested()
        if why is None and check_captured_interrupt():
            why = "interrupted (SIGINT/SIGTERM)"
        now = time.time()
        if why is None and now - self._last_status_poll >= STATUS_POLL_SECONDS:
            self._last_status_poll = now
            run = self._instance.get_run_by_id(self._run_id)
            if run is not None and run.status == dg.DagsterRunStatus.CANCELING:
                why = "termination requested"
        if why is None:
            return
        waiting = [
            f"{k} (waited {now - self._wait_started[k]:.0f} s)" for k in self._pending_claims
        ]
        where = f" while {', '.join(waiting)} waited for a pool slot" if waiting else ""
        self._log.warning(f"{why}{where}: stopping; the run ends CANCELED")
        run = self._instance.get_run_by_id(self._run_id)
        if run is not None and run.status == dg.DagsterRunStatus.STARTED:
            self._instance.report_run_canceling(run, message=f"{why}: canceling")
        raise DagsterExecutionInterruptedError(why)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        super().__exit__(exc_type, exc_value, traceback)
        if exc_type is not None:  # in-process: nothing of this run runs on after an error
            for step_key in list(self._claims):
                self.free_step(step_key)


def _execution_iterator(
    job_context: PlanExecutionContext,
    execution_plan: ExecutionPlan,
    instance_concurrency_context: InstanceConcurrencyContext | None = None,
) -> Iterator[DagsterEvent]:
    with WatchfulConcurrencyContext(
        job_context.instance, job_context.dagster_run, job_context.log
    ) as context:
        yield from inner_plan_execution_iterator(job_context, execution_plan, context)


class VibeInProcessExecutor(InProcessExecutor):
    """In-process executor that records its worker, cleans up dead runs and waits for pool
    slots with :class:`WatchfulConcurrencyContext` (see the module docstring)."""

    def execute(
        self, plan_context: PlanOrchestrationContext, execution_plan: ExecutionPlan
    ) -> Iterator[DagsterEvent]:
        run_id = plan_context.run_id
        optimize_storage(plan_context.instance)  # PostgreSQL: one connection, not one per event
        worker = record_worker(plan_context.instance, run_id)
        yield DagsterEvent.engine_event(
            plan_context,
            f"Executing steps in process (pid: {worker.pid} on {worker.host})",
            event_specific_data=EngineEventData.in_process(
                worker.pid, execution_plan.step_keys_to_execute
            ),
        )
        cleanup_dead_runs(plan_context.instance, exclude=run_id, log_fn=plan_context.log.warning)
        start = time.perf_counter()
        yield from iter(
            ExecuteRunWithPlanIterable(
                execution_plan=plan_context.execution_plan,
                iterator=_execution_iterator,
                execution_context_manager=PlanExecutionContextManager(
                    job=plan_context.job,
                    retry_mode=plan_context.retry_mode,
                    execution_plan=plan_context.execution_plan,
                    run_config=plan_context.run_config,
                    dagster_run=plan_context.dagster_run,
                    instance=plan_context.instance,
                    raise_on_error=plan_context.raise_on_error,
                    output_capture=plan_context.output_capture,
                    step_dependency_config=self.step_dependency_config,
                ),
            )
        )
        yield DagsterEvent.engine_event(
            plan_context,
            f"Finished steps in process (pid: {os.getpid()}) in "
            f"{time.perf_counter() - start:.1f} s",
            event_specific_data=EngineEventData.in_process(
                os.getpid(), execution_plan.step_keys_to_execute
            ),
        )


@dg.executor(name="vibe_in_process", config_schema=IN_PROC_CONFIG)
def vibe_in_process_executor(init_context: dg.InitExecutorContext) -> VibeInProcessExecutor:
    """One process per run (each model loads once per run), idle and interruptible waiting for
    pool slots, dead-run cleanup at run start (see :mod:`vibe_assets.executor`). Same config as
    Dagster's ``in_process`` executor."""
    config = init_context.executor_config
    return VibeInProcessExecutor(
        retries=RetryMode.from_config(config["retries"]),  # type: ignore[arg-type]
        marker_to_close=config.get("marker_to_close"),  # type: ignore[arg-type]
        step_dependency_config=StepDependencyConfig.from_config(
            config.get("step_dependency_config")  # type: ignore[arg-type]
        ),
    )
