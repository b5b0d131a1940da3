"""Dynamic batching for the scoring server: the requests queued while a forward runs are merged into the
next forwards (length-sorted, under a token budget), one forward at a time on a worker thread, and each
request is answered with its own rewards as soon as its last text is scored."""
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
    """One request's token id rows; its future gets the rewards (a list) or the exception that failed it."""

    def __init__(self, rows, loop, future):
        self.rows, self.loop, self.future = rows, loop, future
        self.arrived = time.monotonic()
        self.rewards = [None] * len(rows)
        self.left = len(rows)
        self.failed = False

    @property
    def tokens(self):
        return sum(len(row) for row in self.rows)

    def settle(self, result=None, error=None):
        self.failed = error is not None
        self.loop.call_soon_threadsafe(_settle, self.future, result, error)


def _settle(future, result, error):
    if not future.done():  # the handler may have been cancelled
        future.set_exception(error) if error is not None else future.set_result(result)


class Batcher:
    """A single thread that merges queued requests into length-sorted batches and runs one forward at a time.

    `score` maps rows of token ids to their rewards. The thread takes every request queued when it is free
    (up to `max_batch_tokens`), so the requests that arrive while a forward runs share the next one; it
    waits for more only while its first request is younger than `max_wait_s` (0: never, and a lone client
    never waits). It sorts their rows by length, runs `length_batches` of them and answers each request
    as soon as its last row is scored. A batch that raises is re-run one request at a time, so an error
    fails only the requests that cause it.
    """

    def __init__(self, score, max_batch_tokens, max_wait_s=0.0, max_padding=1.0):
        self.score_rows, self.max_batch_tokens, self.max_wait_s = score, max_batch_tokens, max_wait_s
        self.max_padding = max_padding
        self.queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="batcher", daemon=True)
        # forward_s: wall time in forwards; forward_cpu_s: this thread's CPU time in them (less when it was
        # preempted by other work or waited for the GIL)
        self.stats = {"forwards": 0, "texts": 0, "tokens": 0, "forward_s": 0.0, "forward_cpu_s": 0.0}

    def start(self):
        self.thread.start()

    def stop(self):
        """Score everything queued, then end the thread."""
        self.queue.put(None)
        self.thread.join()

    async def score(self, rows):
        loop = asyncio.get_running_loop()
        job = Job(rows, loop, loop.create_future())
        self.queue.put(job)
        return await job.future

    def _run(self):
        while True:
            jobs, stopping = self._collect()
            if jobs:
                self._process(jobs)
            if stopping:
                return

    def _collect(self):
        """(jobs to run now, whether stop() was called)."""
        first = self.queue.get()
        if first is None:
            return [], True
        jobs, tokens = [first], first.tokens
        deadline = first.arrived + self.max_wait_s
        while tokens < self.max_batch_tokens:
            try:
                job = self.queue.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
            tokens += job.tokens
        return jobs, False

    def _process(self, jobs):
        rows = sorted(((len(row), job, i) for job in jobs for i, row in enumerate(job.rows)), key=lambda r: -r[0])
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
        if not batch:
            return
        rows = [job.rows[i] for job, i in batch]
        wall, cpu = time.perf_counter(), time.thread_time()
        rewards = self.score_rows(rows)
        self.stats["forward_s"] += time.perf_counter() - wall
        self.stats["forward_cpu_s"] += time.thread_time() - cpu
        self.stats["forwards"] += 1
        self.stats["texts"] += len(rows)
        self.stats["tokens"] += sum(len(row) for row in rows)
        for (job, i), reward in zip(batch, rewards):
            job.rewards[i] = reward
            job.left -= 1
            if job.left == 0:
                job.settle(job.rewards)
