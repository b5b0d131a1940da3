"""Dynamic batching for the scoring server: concurrent requests merged into length-sorted batches under
a token budget, one forward at a time on a worker thread, each request answered with its own rewards."""
import asyncio
import queue
import threading
import time
import traceback


def length_batches(lengths, max_batch_tokens, max_padding=1.0):
    """Cut rows sorted longest first into (start, end) runs whose rows x longest row fits the budget and
    holds at most a `max_padding` share of padding (compute spent on padding is wasted on a CPU)."""
    batches, start = [], 0
    while start < len(lengths):
        end, real = start + 1, lengths[start]
        while end < len(lengths):
            padded = (end - start + 1) * lengths[start]
            if padded > max_batch_tokens or real + lengths[end] < (1 - max_padding) * padded:
                break
            real += lengths[end]
            end += 1
        batches.append((start, end))
        start = end
    return batches


class Job:
    """One request's texts; its future gets (rewards, truncated flags) or the exception that failed it."""

    def __init__(self, texts, loop, future):
        self.texts, self.loop, self.future = texts, loop, future
        self.arrived = time.monotonic()
        self.lengths = self.truncated = None
        self.rewards = [None] * len(texts)
        self.left = len(texts)
        self.failed = False

    def settle(self, result=None, error=None):
        self.failed = error is not None
        self.loop.call_soon_threadsafe(_settle, self.future, result, error)


def _settle(future, result, error):
    if not future.done():  # the handler may have been cancelled
        future.set_exception(error) if error is not None else future.set_result(result)


class Batcher:
    """A single thread that merges queued requests into length-sorted batches and runs one forward at a time.

    It takes the first waiting request, collects others for up to `max_wait_s` after it arrived (or
    until `max_batch_tokens` are waiting), sorts all their texts by length, runs `length_batches` of them,
    and answers each request as soon as its last text is scored. A batch that raises is re-run one
    request at a time, so an error fails only the requests that cause it.
    """

    def __init__(self, scorer, max_batch_tokens, max_wait_s, max_padding=1.0):
        self.scorer, self.max_batch_tokens, self.max_wait_s = scorer, max_batch_tokens, max_wait_s
        self.max_padding = max_padding
        self.queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="batcher", daemon=True)
        self.stats = {"forwards": 0, "texts": 0}

    def start(self):
        self.thread.start()

    def stop(self):
        """Score everything queued, then end the thread."""
        self.queue.put(None)
        self.thread.join()

    async def score(self, texts):
        loop = asyncio.get_running_loop()
        job = Job(texts, loop, loop.create_future())
        self.queue.put(job)
        return await job.future

    def _run(self):
        while True:
            jobs, stopping = self._collect()
            if jobs:
                self._process(jobs)
            if stopping:
                return

    def _measure(self, job):
        try:
            lengths = self.scorer.lengths(job.texts)
        except Exception as error:
            traceback.print_exc()
            job.settle(error=error)
            return 0
        job.truncated = [n > self.scorer.max_seq_len for n in lengths]
        job.lengths = [min(n, self.scorer.max_seq_len) for n in lengths]
        return sum(job.lengths)

    def _collect(self):
        """(jobs to run now, whether stop() was called)."""
        first = self.queue.get()
        if first is None:
            return [], True
        jobs, tokens = [first], self._measure(first)
        deadline = first.arrived + self.max_wait_s
        while tokens < self.max_batch_tokens:
            try:
                job = self.queue.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                break
            if job is None:
                return [j for j in jobs if not j.failed], True
            jobs.append(job)
            tokens += self._measure(job)
        return [j for j in jobs if not j.failed], False

    def _process(self, jobs):
        rows = sorted(((length, job, i) for job in jobs for i, length in enumerate(job.lengths)),
                      key=lambda row: -row[0])
        for start, end in length_batches([row[0] for row in rows], self.max_batch_tokens, self.max_padding):
            batch = [(job, i) for _, job, i in rows[start:end] if not job.failed]
            try:
                self._score(batch)
            except Exception:
                traceback.print_exc()
                for job in dict.fromkeys(job for job, _ in batch):  # one request at a time, in order
                    try:
                        self._score([(j, i) for j, i in batch if j is job])
                    except Exception as error:
                        job.settle(error=error)

    def _score(self, batch):
        rewards = self.scorer([job.texts[i] for job, i in batch])
        self.stats["forwards"] += 1
        self.stats["texts"] += len(batch)
        for (job, i), reward in zip(batch, rewards):
            job.rewards[i] = reward
            job.left -= 1
            if job.left == 0:
                job.settle((job.rewards, job.truncated))
