"""Dynamic batching: concurrent requests are gathered for a few milliseconds and generated as one padded batch.

One background thread owns the model. It takes the first waiting request, gathers those that follow it
within ``batch_wait_ms`` of each other (up to ``max_batch_size`` answers), and runs the suite's
:class:`Generator` once over them all, each row with its own settings (:mod:`~finetuning.inference.decoding`).
Text reaches each request's asyncio queue as it is generated, so streams see tokens as they come. A request
whose client went away is ended at the next step, and a batch ends as soon as every row in it is done.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from finetuning.inference.decoding import RowSampler, RowStopper, SamplingParams, Sequence
from finetuning.inference.generation import Generator

logger = logging.getLogger("finetuning")


@dataclass
class Event:
    """Text for choice ``index``; ``finish_reason`` set on its last event; ``error`` if generation failed."""

    index: int
    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0
    error: str | None = None


@dataclass
class Request:
    """One HTTP request: its prompt, its ``n`` answers, and the queue its events go to."""

    prompt_ids: list[int]
    params: SamplingParams
    n: int
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    cancelled: bool = False

    def post(self, event: Event) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def sequences(self) -> list[Sequence]:
        def emit(sequence: Sequence, text: str) -> None:
            done = sequence.finish_reason if not text else None
            self.post(Event(sequence.index, text, done, len(sequence.tokens)))

        return [Sequence(i, self.prompt_ids, self.params, emit, lambda: self.cancelled) for i in range(self.n)]

    async def stream(self) -> AsyncIterator[Event]:
        """Events until all ``n`` answers are finished."""
        open_choices = self.n
        while open_choices:
            event = await self.events.get()
            if event.error is not None or event.finish_reason is not None:
                open_choices -= 1
            yield event


class BatchingEngine:
    """The model's one generation thread and the queue in front of it."""

    def __init__(self, generator: Generator, *, max_batch_size: int = 32, batch_wait_ms: float = 5.0) -> None:
        self.generator = generator
        self.max_batch_size = max_batch_size
        self.batch_wait = batch_wait_ms / 1000
        self.context_length = context_length(generator.model)
        config = generator.generation_config
        eos = config.eos_token_id
        self.stop_ids = set(eos if isinstance(eos, list) else [eos])
        self._queue: queue.Queue[Request | None] = queue.Queue()
        self.running = 0  # answers being generated now
        self._thread = threading.Thread(target=self._loop, name="batching-engine", daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def submit(self, request: Request) -> None:
        self._queue.put(request)

    def close(self) -> None:
        """Finish the batch in progress, then stop the thread."""
        self._queue.put(None)
        self._thread.join(timeout=60)

    def _gather(self, first: Request) -> tuple[list[Request], bool]:
        """The first request and those that follow it within ``batch_wait`` of each other (clients answered by
        the same batch come back as a burst), up to the batch size and ten waits in all; False: closing."""
        batch, rows = [first], first.n
        last_call = time.monotonic() + 10 * self.batch_wait
        while rows < self.max_batch_size:
            try:
                request = self._queue.get(timeout=max(min(self.batch_wait, last_call - time.monotonic()), 0))
            except queue.Empty:
                break
            if request is None:
                return batch, False
            if rows + request.n > self.max_batch_size:
                self._queue.put(request)  # the next batch starts with it
                break
            batch.append(request)
            rows += request.n
        return batch, True

    def _loop(self) -> None:
        keep_going = True
        while keep_going:
            first = self._queue.get()
            if first is None:
                return
            batch, keep_going = self._gather(first)
            batch = [request for request in batch if not request.cancelled]
            if batch:
                self._run(batch)

    def _run(self, batch: list[Request]) -> None:
        from transformers import LogitsProcessorList, StoppingCriteriaList

        rows = [sequence for request in batch for sequence in request.sequences()]
        self.running = len(rows)
        stopper = RowStopper(rows, self.stop_ids, self.generator.decode)
        try:
            self.generator.generate_ids(
                [sequence.prompt_ids for sequence in rows],
                logits_processor=LogitsProcessorList([RowSampler(rows)]),
                stopping_criteria=StoppingCriteriaList([stopper]),
                max_new_tokens=max(sequence.params.max_tokens for sequence in rows),
            )
        except Exception as error:  # one failed batch must not take the server down
            logger.exception("generation failed for a batch of %d", len(rows))
            for request in batch:
                for index in range(request.n):
                    request.post(Event(index, error=f"generation failed: {type(error).__name__}: {error}"))
            return
        finally:
            self.running = 0
        for sequence in rows:  # rows the batch's max_new_tokens ended before their own end
            if sequence.finish_reason is None:
                stopper.finish(sequence, "length", sequence.text)


def context_length(model: Any) -> int:
    """The most positions the model takes (prompt + answer)."""
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 1 << 30  # relative positions (T5): no hard limit
