"""Dynamic batching per model in the shared model host: concurrent predictions for one loaded model, arriving on
different connections' threads, are answered by one model call.

The rule (TF Serving's ``max_batch_size`` and ``batch_timeout_micros``, Triton's ``max_queue_delay_microseconds``,
with one addition so that a lone request never waits):

- Requests queue in arrival order. A batch is the longest prefix of the queue whose texts fit in ``max_batch_size``;
  a request with more texts than that runs alone. A request is never split, reordered or skipped.
- The batch runs as soon as one of these holds: it is full (or the next request does not fit); every possible sender
  is already in it; ``max_batch_delay`` has passed since its first request arrived.
- *Every possible sender*: each connection to the host sends one request at a time, so no more requests for a model
  can be pending at once than connections holding it (``senders``, the model's lease count). A model with one thin
  worker never waits; with several, a batch waits (at most the delay) only while another worker could still send.
- While a batch runs, new requests queue; when the model is busy, the next batch forms without any waiting.

Only the model call is batched: decoding and encoding stay in each caller's thread. ``model_calls`` threads per model
make the calls, each taking the next batch when it is free, so at most that many of a model's calls overlap: on a CPU
a large model's calls gain as much from running side by side as from batching (its batch is padded to its longest
text). With ``max_batch_size`` 1 there is no thread and no queue: each caller calls the model itself, as before
batching.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from handler.codec import Prediction
from handler.manifest import ResponseFormat
from handler.model import TextClassifier

logger = logging.getLogger(__name__)


class BatcherClosedError(RuntimeError):
    """A prediction was asked of a model after it was unloaded."""


@dataclass(frozen=True)
class BatchCounts:
    """What a model has predicted: successful model calls, and the texts they held."""

    batches: int = 0
    texts: int = 0


@dataclass
class _Request:
    texts: list[str]
    arrived: float
    #: The request's predictions, and the texts of the model call that made them.
    answer: Future[tuple[list[Prediction], int]]


class BatchingClassifier:
    """A :class:`~handler.model.TextClassifier` that gathers concurrent ``predict`` calls into batched model calls.

    Args:
        classifier: the loaded model; only this object's ``predict`` is ever called with a batch.
        max_batch_size: most texts per model call (a larger request runs alone); 1 turns batching off.
        max_batch_delay: seconds a batch may wait for more requests after its first arrived.
        senders: how many callers may have a request pending at once (the model's connections); None: unknown, so
            a batch that is not full always waits up to the delay.
        name: names the batching threads (``batcher <name>``).
        model_calls: how many batches of this model may be in the model at once (a thread each).
    """

    def __init__(
        self,
        classifier: TextClassifier,
        *,
        max_batch_size: int,
        max_batch_delay: float,
        senders: Callable[[], int] | None = None,
        name: str = "model",
        model_calls: int = 1,
    ) -> None:
        if max_batch_size < 1 or max_batch_delay < 0 or model_calls < 1:
            raise ValueError(
                f"max_batch_size {max_batch_size} and model_calls {model_calls} must be >= 1, and max_batch_delay "
                f"{max_batch_delay} >= 0"
            )
        self.classifier = classifier
        self._max_batch_size = max_batch_size
        self._max_batch_delay = max_batch_delay
        self._senders = senders
        self._condition = threading.Condition()
        self._queue: deque[_Request] = deque()
        # Requests inside a model call now: their senders cannot send another until answered.
        self._in_call = 0
        self._closed = False
        # A leaf lock: the registry reads the counts while holding its own lock.
        self._counts_lock = threading.Lock()
        self._counts = BatchCounts()
        self._threads: tuple[threading.Thread, ...] = ()
        if max_batch_size > 1:
            self._threads = tuple(
                threading.Thread(target=self._serve, name=f"batcher {name}", daemon=True) for _ in range(model_calls)
            )
            for thread in self._threads:
                thread.start()

    @property
    def labels(self) -> tuple[str, ...]:
        return self.classifier.labels

    @property
    def response_format(self) -> ResponseFormat:
        return self.classifier.response_format

    @property
    def counts(self) -> BatchCounts:
        with self._counts_lock:
            return self._counts

    @property
    def pending(self) -> int:
        """Requests waiting for a batch (not those in the model call)."""
        with self._condition:
            return len(self._queue)

    @property
    def threads(self) -> tuple[threading.Thread, ...]:
        """The threads making the model calls; none when batching is off."""
        return self._threads

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        """One prediction per text, in order, from a model call that may hold other callers' texts too.

        Raises:
            ModelOutOfMemoryError: the runtime ran out of memory on the batch holding these texts (every caller of
                that batch gets it); likewise any other error of that model call.
            BatcherClosedError: the model was unloaded.
        """
        return self.predict_in_batch(texts)[0]

    def predict_in_batch(self, texts: Sequence[str]) -> tuple[list[Prediction], int]:
        """:meth:`predict`, and how many texts the model call that answered them held (these and other callers')."""
        texts = list(texts)
        if not self._threads:
            if self._closed:
                raise BatcherClosedError("the model was unloaded")
            predictions = self.classifier.predict(texts)
            self._count(len(texts))
            return predictions, len(texts)
        request = _Request(texts, time.monotonic(), Future())
        with self._condition:
            if self._closed:
                raise BatcherClosedError("the model was unloaded")
            self._queue.append(request)
            self._condition.notify()
        return request.answer.result()

    def close(self) -> None:
        """Take no more requests, answer the queued ones, and end the threads (returns once they have ended)."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join()

    def _count(self, texts: int) -> None:
        with self._counts_lock:
            self._counts = BatchCounts(self._counts.batches + 1, self._counts.texts + texts)

    def _serve(self) -> None:
        try:
            while (batch := self._next_batch()) is not None:
                self._run(batch)
        finally:
            # Only reached on close, or if a model call raised something beyond Exception: nobody may wait forever.
            with self._condition:
                self._closed = True
                left, self._queue = list(self._queue), deque()
            for request in left:
                request.answer.set_exception(BatcherClosedError("the model was unloaded"))

    def _next_batch(self) -> list[_Request] | None:
        """The next batch by the rule of this module, or None once closed with nothing queued."""
        while True:
            # Outside our lock: it takes the registry's, which is never held while taking ours.
            senders = sys.maxsize if self._senders is None else self._senders()
            with self._condition:
                if not self._queue:  # nothing yet, or another thread took it
                    if self._closed:
                        return None
                    self._condition.wait()
                    continue
                count, full = self._fitting()
                remaining = self._queue[0].arrived + self._max_batch_delay - time.monotonic()
                # Senders whose request is in a model call now cannot send again until it is answered.
                if full or self._closed or count >= senders - self._in_call or remaining <= 0:
                    self._in_call += count
                    return [self._queue.popleft() for _ in range(count)]
                self._condition.wait(remaining)

    def _fitting(self) -> tuple[int, bool]:
        """How many queued requests the next batch takes, and whether it can take no more."""
        count = texts = 0
        for request in self._queue:
            if count and texts + len(request.texts) > self._max_batch_size:
                return count, True
            count += 1
            texts += len(request.texts)
            if texts >= self._max_batch_size:
                return count, True
        return count, False

    def _run(self, batch: list[_Request]) -> None:
        try:
            self._call(batch)
        finally:
            with self._condition:
                self._in_call -= len(batch)

    def _call(self, batch: list[_Request]) -> None:
        texts = [text for request in batch for text in request.texts]
        try:
            predictions = self.classifier.predict(texts)
            if len(predictions) != len(texts):
                raise RuntimeError(f"the model gave {len(predictions)} predictions for {len(texts)} texts")
        except BaseException as error:
            logger.warning("a batch of %d requests (%d texts) failed: %s", len(batch), len(texts), type(error).__name__)
            for request in batch:
                request.answer.set_exception(error)
            if not isinstance(error, Exception):
                raise
            return
        self._count(len(texts))
        start = 0
        for request in batch:
            request.answer.set_result((predictions[start : start + len(request.texts)], len(texts)))
            start += len(request.texts)
