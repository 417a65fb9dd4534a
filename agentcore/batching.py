"""Batch processing of incoming messages with the compiled accumulator, flushed when full or when the oldest is due."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from typing import TYPE_CHECKING, Any

from ._eager import start_eager
from ._impl import BatchAccumulator

if TYPE_CHECKING:
    from .agent import NATSAgent, _Delivery, _Queued

__all__ = ("BatchingMixin",)

log = logging.getLogger("agentcore.batching")


class BatchingMixin:
    """Give NATSAgent enable_batch_processing, disable_batch_processing and the process_batch hook.

    While batching is on, every non-system message (tasks and subscribed topics; never control or
    discovery) joins the pending batch. A batch is handed to process_batch() when it holds batch_size
    messages ("full") or when its oldest message has waited batch_timeout seconds ("timeout"); the
    deadline is an event-loop timer, not a poll. A clean stop processes what is pending before the
    connection closes, within the drain timeout ("stop"). Metrics: batches, batched_messages,
    batch_flush_full, batch_flush_timeout, batch_flush_disable, batch_flush_stop and batch_size_max in
    get_metrics().
    """

    _batch: BatchAccumulator | None = None
    _batch_timer: asyncio.TimerHandle | None = None
    _batch_clock: asyncio.AbstractEventLoop | None = None  # the loop whose time() the accumulator reads, if any

    def enable_batch_processing(self, batch_size: int | None = None, batch_timeout: float | None = None) -> None:
        """Accumulate incoming messages and process them in batches (defaults: nats.batch_size, nats.batch_timeout)."""
        agent: NATSAgent = self  # type: ignore[assignment]
        if self._batch is not None:
            self.disable_batch_processing()
        size = batch_size if batch_size is not None else agent.config["nats.batch_size"]
        timeout = batch_timeout if batch_timeout is not None else agent.config["nats.batch_timeout"]
        # The accumulator reads the loop's clock so its deadline can go straight to loop.call_at().
        loop = agent._loop
        self._batch_clock = loop
        self._batch = BatchAccumulator(size, timeout, loop.time) if loop is not None else BatchAccumulator(size, timeout, time.monotonic)

    def disable_batch_processing(self) -> None:
        """Stop batching; what is pending is flushed first."""
        batch = self._batch
        if batch is None:
            return
        self._batch = None
        self._cancel_batch_timer()
        if len(batch):
            self._flush_batch(batch.drain(), "disable")

    @property
    def batch_processing(self) -> bool:
        """Return whether batch processing is on."""
        return self._batch is not None

    async def process_batch(self, messages: list[dict[str, Any]]) -> list[Any] | None:
        """Process one batch of message envelopes (override point).

        Return one result per message, in order, and each goes to that message's requester as a task
        result would; return None (the default) and each message is processed as usual, by its handler.
        May be a plain function too.
        """
        return None

    # ------------------------------------------------------------------ internals

    def _batch_add(self, item: _Queued) -> None:
        batch = self._batch
        assert batch is not None
        full = batch.add(item)
        if full is not None:
            self._cancel_batch_timer()
            self._flush_batch(full, "full")
        elif len(batch) == 1:
            loop = asyncio.get_running_loop()
            due = batch.deadline
            assert due is not None  # it holds one item
            if self._batch_clock is not loop:  # enabled before start: the accumulator reads time.monotonic
                due = loop.time() + (due - time.monotonic())
            self._batch_timer = loop.call_at(due, self._on_batch_due)

    def _on_batch_due(self) -> None:
        self._batch_timer = None
        batch = self._batch
        if batch is not None and len(batch):
            self._flush_batch(batch.drain(), "timeout")

    def _cancel_batch_timer(self) -> None:
        if self._batch_timer is not None:
            self._batch_timer.cancel()
            self._batch_timer = None

    def _flush_batch_on_stop(self) -> None:
        """Start processing the pending batch as one of the agent's tasks, which astop() drains before closing."""
        batch = self._batch
        self._cancel_batch_timer()
        if batch is not None and len(batch):
            self._flush_batch(batch.drain(), "stop", wait_handlers=True)

    def _flush_batch(self, items: list[_Queued], reason: str, wait_handlers: bool = False) -> None:
        agent: NATSAgent = self  # type: ignore[assignment]
        counters = agent._metrics.counters
        counters["batches"] += 1
        counters["batched_messages"] += len(items)
        counters[f"batch_flush_{reason}"] += 1
        if len(items) > counters["batch_size_max"]:
            counters["batch_size_max"] = len(items)
        agent._track(asyncio.ensure_future(self._run_batch(items, wait_handlers)))

    async def _run_batch(self, items: list[_Queued], wait_handlers: bool = False) -> None:
        from .caching import MISS

        agent: NATSAgent = self  # type: ignore[assignment]
        deliveries = [q.delivery() for q in items]
        # True once an item is recorded as finished, or its own handler (which answers it) has it.
        settled: list[bool] = [False] * len(items)
        try:
            await self._process_batch_items(items, deliveries, settled, wait_handlers)
        except asyncio.CancelledError:
            # stop() past its drain timeout: every requester still waiting hears of it, none times out.
            for q, delivery, done in zip(items, deliveries, settled):
                if not done:
                    agent._metrics.failed += 1
                    agent._finish_message(q.reg, q.message, MISS)
                    if agent._release(q.msg, redeliver=True):
                        continue  # a persisted task: JetStream offers it again
                    agent._track(start_eager(agent._answer_error(
                        delivery, "cancelled", f"batch processing of message {q.message['id']} was cancelled")))
            raise

    async def _process_batch_items(
        self, items: list[_Queued], deliveries: list[_Delivery], settled: list[bool], wait_handlers: bool
    ) -> None:
        from .agent import _TASK
        from .caching import DONE, MISS
        from .envelope import is_expired

        agent: NATSAgent = self  # type: ignore[assignment]
        metrics = agent._metrics
        live: list[int] = []
        for i, q in enumerate(items):  # an expired message is answered as such, never handed to process_batch
            if is_expired(q.message):
                metrics.expired += 1
                metrics.failed += 1
                agent._finish_message(q.reg, q.message, DONE)
                settled[i] = True
                try:
                    await agent._try_send(agent._answer_error(deliveries[i], "expired", f"message {q.message['id']} expired before it was processed"))
                finally:
                    agent._release(q.msg)  # a persisted task: acked once answered
            else:
                live.append(i)
        if not live:
            return
        pending = agent._deliveries
        for i in live:  # publish_result() works from inside process_batch
            pending.setdefault(deliveries[i].message["id"], deliveries[i])
        try:
            results: Any = self.process_batch([items[i].message for i in live])  # a list, None, or an awaitable of either
            if inspect.isawaitable(results):
                results = await results
            if results is not None:
                results = list(results)
                if len(results) != len(live):
                    raise ValueError(f"process_batch returned {len(results)} results for {len(live)} messages")
        except Exception as exc:
            log.exception("agent %s process_batch failed on a batch of %d", agent.agent_id, len(live))
            metrics.failed += len(live)
            for i in live:
                agent._finish_message(items[i].reg, items[i].message, MISS)  # a retry runs again
                settled[i] = True
                try:
                    await agent._try_send(agent._answer_error(deliveries[i], "handler_error", f"{type(exc).__name__}: {exc}"))
                finally:
                    agent._release(items[i].msg)  # answered with the error: a persisted task is not run again
            return
        finally:
            for i in live:
                mid = deliveries[i].message["id"]
                if pending.get(mid) is deliveries[i]:
                    del pending[mid]
        if results is None:
            if wait_handlers:
                # Stopping: handlers started from the agent's queue later would outlive the drain, so run them here
                # (still at most max_concurrency at once) and finish only when every one has answered.
                limit = asyncio.Semaphore(agent._max_concurrency)

                async def handle(i: int) -> None:
                    q = items[i]
                    async with limit:
                        settled[i] = True  # from here its own handler answers it, even when cancelled
                        agent._inflight += 1  # _handle counts it down
                        await agent._handle(q.reg, q.subject, q.message, q.msg, q.t0)

                await asyncio.gather(*(handle(i) for i in live))
                return
            for i in live:  # the default: each message through its own handler, under the concurrency limit
                q = items[i]
                settled[i] = True
                if agent._inflight >= agent._max_concurrency:
                    agent._admit(q)
                else:
                    agent._run(q.reg, q.subject, q.message, q.msg, q.t0)
            return
        for i, result in zip(live, results):
            q, delivery = items[i], deliveries[i]
            agent._finish_message(q.reg, q.message, result)  # first: a cancel while answering leaves it recorded
            settled[i] = True
            try:
                if q.reg.kind == _TASK or delivery.destination is not None:
                    await agent._try_send(agent._answer(delivery, result))
            finally:
                agent._release(q.msg)
            metrics.processed += 1
            metrics.observe(time.perf_counter() - q.t0)

