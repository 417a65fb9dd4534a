"""Batch processing of incoming messages with the compiled accumulator, flushed when full or when the oldest is due."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from ._impl import BatchAccumulator
from .core.caching import DONE, MISS, kept
from .core.host import Host
from .core.records import TASK, Delivery, Queued
from .envelope import is_expired

__all__ = ("Batching",)

log = logging.getLogger("agentcore.batching")

ProcessBatch = Callable[[list[dict[str, Any]]], Any]


class Batching:
    """Accumulate non-system messages and hand them to process_batch in batches.

    While batching is on, every non-system message (tasks and subscribed topics; never control or
    discovery) joins the pending batch. A batch is handed to process_batch() when it holds batch_size
    messages ("full") or when its oldest message has waited batch_timeout seconds ("timeout"); the
    deadline is an event-loop timer, not a poll. A clean stop processes what is pending before the
    connection closes, within the drain timeout ("stop"). Metrics: batches, batched_messages,
    batch_flush_full, batch_flush_timeout, batch_flush_disable, batch_flush_stop and batch_size_max in
    get_metrics().
    """

    def __init__(self, host: Host, process_batch: ProcessBatch) -> None:
        self._host = host
        self._process_batch = process_batch  # the agent's override point: a list, None, or an awaitable of either
        self._batch: BatchAccumulator | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._clock: asyncio.AbstractEventLoop | None = None  # the loop whose time() the accumulator reads, if any

    def enable(self, batch_size: int | None = None, batch_timeout: float | None = None) -> None:
        """Accumulate incoming messages and process them in batches (defaults: nats.batch_size, nats.batch_timeout)."""
        host = self._host
        if self._batch is not None:
            self.disable()
        size = batch_size if batch_size is not None else host.config["nats.batch_size"]
        timeout = batch_timeout if batch_timeout is not None else host.config["nats.batch_timeout"]
        # The accumulator reads the loop's clock so its deadline can go straight to loop.call_at().
        loop = host.loop
        self._clock = loop
        self._batch = BatchAccumulator(size, timeout, loop.time) if loop is not None else BatchAccumulator(size, timeout, time.monotonic)
        if host.status not in ("stopping", "stopped"):
            host.work.intercept(self._add)

    def disable(self) -> None:
        """Stop batching; what is pending is flushed first."""
        batch = self._batch
        if batch is None:
            return
        self._batch = None
        self._host.work.intercept(None)
        self._cancel_timer()
        if len(batch):
            self._flush(batch.drain(), "disable")

    @property
    def enabled(self) -> bool:
        """Return whether batch processing is on."""
        return self._batch is not None

    # ------------------------------------------------------------------ the Component protocol

    async def start(self) -> None:
        """Take messages again after a restart, when batching is on."""
        if self._batch is not None:
            self._host.work.intercept(self._add)

    def reconnected(self) -> None:
        """Nothing to renew."""

    def drain(self) -> None:
        """Start processing the pending batch as one of the agent's tasks, which the stop drains before closing."""
        self._host.work.intercept(None)  # the pending batch is flushed now: later messages run as usual
        batch = self._batch
        self._cancel_timer()
        if batch is not None and len(batch):
            self._flush(batch.drain(), "stop", wait_handlers=True)

    async def stop(self) -> None:
        """Nothing left: the drain flushed the pending batch."""

    def describe(self) -> Mapping[str, Any]:
        """Add nothing to discovery."""
        return {}

    def gauges(self) -> Mapping[str, float]:
        """Report the batch settings in force and how many messages wait in the pending batch."""
        batch = self._batch
        if batch is None:
            return {}
        return {"batch_size_limit": batch.batch_size, "batch_timeout": batch.batch_timeout, "batch_pending": len(batch)}

    # ------------------------------------------------------------------ internals

    def _add(self, item: Queued) -> None:
        batch = self._batch
        assert batch is not None
        full = batch.add(item)
        if full is not None:
            self._cancel_timer()
            self._flush(full, "full")
        elif len(batch) == 1:
            loop = asyncio.get_running_loop()
            due = batch.deadline
            assert due is not None  # it holds one item
            if self._clock is not loop:  # enabled before start: the accumulator reads time.monotonic
                due = loop.time() + (due - time.monotonic())
            self._timer = loop.call_at(due, self._on_due)

    def _on_due(self) -> None:
        self._timer = None
        batch = self._batch
        if batch is not None and len(batch):
            self._flush(batch.drain(), "timeout")

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _flush(self, items: list[Queued], reason: str, wait_handlers: bool = False) -> None:
        counters = self._host.metrics.counters
        counters["batches"] += 1
        counters["batched_messages"] += len(items)
        counters[f"batch_flush_{reason}"] += 1
        if len(items) > counters["batch_size_max"]:
            counters["batch_size_max"] = len(items)
        self._host.spawn(asyncio.ensure_future(self._run(items, wait_handlers)))

    async def _run(self, items: list[Queued], wait_handlers: bool = False) -> None:
        host = self._host
        deliveries = [q.delivery() for q in items]
        # True once an item is recorded as finished, or its own handler (which answers it) has it.
        settled: list[bool] = [False] * len(items)
        try:
            await self._process(items, deliveries, settled, wait_handlers)
        except asyncio.CancelledError:
            # stop() past its drain timeout: every requester still waiting hears of it, none times out.
            for q, delivery, done in zip(items, deliveries, settled):
                if not done:
                    host.metrics.failed += 1
                    host.work.finish(q, MISS)
                    if host.work.settlement.release(q.msg, redeliver=True):
                        continue  # a persisted task: JetStream offers it again
                    host.spawn(host.fail(delivery, "cancelled", f"batch processing of message {q.message['id']} was cancelled"))
            raise

    async def _process(self, items: list[Queued], deliveries: list[Delivery], settled: list[bool], wait_handlers: bool) -> None:
        host = self._host
        work = host.work
        settlement = work.settlement
        metrics = host.metrics
        live: list[int] = []
        for i, q in enumerate(items):  # an expired message is answered as such, never handed to process_batch
            if is_expired(q.message):
                metrics.expired += 1
                metrics.failed += 1
                work.finish(q, DONE)
                settled[i] = True
                try:
                    await host.try_send(host.fail(deliveries[i], "expired", f"message {q.message['id']} expired before it was processed"))
                finally:
                    settlement.release(q.msg)  # a persisted task: acked once answered
            else:
                live.append(i)
        if not live:
            return
        claimed = [deliveries[i] for i in live]
        for delivery in claimed:  # publish_result() works from inside process_batch
            host.hold(delivery)
        try:
            results: Any = self._process_batch([items[i].message for i in live])  # a list, None, or an awaitable of either
            if inspect.isawaitable(results):
                results = await results
            if results is not None:
                results = list(results)
                if len(results) != len(live):
                    raise ValueError(f"process_batch returned {len(results)} results for {len(live)} messages")
        except Exception as exc:
            log.exception("agent %s process_batch failed on a batch of %d", host.agent_id, len(live))
            metrics.failed += len(live)
            for i in live:
                work.finish(items[i], MISS)  # a retry runs again
                settled[i] = True
                try:
                    await host.try_send(host.fail(deliveries[i], "handler_error", f"{type(exc).__name__}: {exc}"))
                finally:
                    settlement.release(items[i].msg)  # answered with the error: a persisted task is not run again
            return
        finally:
            for delivery in claimed:
                host.unhold(delivery)
        if results is None:
            if wait_handlers:
                # Stopping: handlers started from the agent's queue later would outlive the drain, so run them here
                # (still at most max_concurrency at once) and finish only when every one has answered.
                limit = asyncio.Semaphore(work.max_concurrency)

                async def handle(i: int) -> None:
                    async with limit:
                        settled[i] = True  # from here its own handler answers it, even when cancelled
                        await work.run_counted(items[i])

                await asyncio.gather(*(handle(i) for i in live))
                return
            for i in live:  # the default: each message through its own handler, under the concurrency limit
                settled[i] = True
                work.submit(items[i])
            return
        for i, result in zip(live, results):
            q, delivery = items[i], deliveries[i]
            work.finish(q, result)  # first: a cancel while answering leaves it recorded
            settled[i] = True
            try:
                if q.reg.kind == TASK or delivery.destination is not None:
                    await host.try_send(host.answer(delivery, result))
            finally:
                settlement.release(q.msg)
            if delivery.envelope is not None:  # sent: a replay answers what was sent, and keeps no object alive
                work.finish(q, kept(result, delivery.envelope), delivery.size)
            metrics.processed += 1
            metrics.observe(time.perf_counter() - q.t0)
