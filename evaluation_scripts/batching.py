"""Dynamic batching for the scoring server: the requests queued while a forward runs are merged into the
next forwards (length-sorted, under a token budget), one forward at a time on a worker thread, and each
request is answered with its own rewards as soon as its last text is scored."""
import asyncio
import math
import queue
import threading
import time
import traceback

# The model thread takes queued requests until they hold this many batches' tokens, and cuts them together:
# more texts to choose from make batches of closer lengths.
POOL_BATCHES = 4


def cheapest_batches(lengths, max_batch_tokens, forward_cost):
    """Cut rows sorted longest first into the (start, end) runs that cost least in all: a run of k rows
    whose longest has L tokens costs its k x L padded tokens, at most `max_batch_tokens` (a longer row runs
    alone), plus `forward_cost` tokens for the forward itself.

    On a CPU a forward's cost grows with its tokens from the first one, so padding is paid in full and
    merging saves only the per-forward cost. (Packed forwards compute no padding in the linear layers, but
    charging it anyway cut batches that cost within 4% of those charged real tokens only: docs/serving.md.)
    Dynamic programming over the runs that fit the budget (O(rows x rows per run)).
    """
    best, cut = [0.0] + [math.inf] * len(lengths), [0] * (len(lengths) + 1)
    for end in range(1, len(lengths) + 1):
        for start in range(end - 1, -1, -1):
            if end - start > 1 and (end - start) * lengths[start] > max_batch_tokens:
                break
            price = best[start] + (end - start) * lengths[start] + forward_cost
            if price < best[end]:
                best[end], cut[end] = price, start
    batches, end = [], len(lengths)
    while end:
        batches.append((cut[end], end))
        end = cut[end]
    return batches[::-1]


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

    `score` maps rows of token ids to their rewards. The thread takes the requests queued when it is free
    (until they hold `max_batch_tokens`), so the requests that arrive while a forward runs share the next
    ones; it waits for more only while its first request is younger than `max_wait_s` (0: never, and a lone
    client never waits). It sorts their rows by length, runs the `cheapest_batches` of them and answers each
    request as soon as its last row is scored. A batch that raises is re-run one request at a time, so an
    error fails only the requests that cause it.
    """

    def __init__(self, score, max_batch_tokens, max_wait_s=0.0, forward_cost=0.0):
        self.score_rows, self.max_batch_tokens, self.max_wait_s = score, max_batch_tokens, max_wait_s
        self.forward_cost = forward_cost
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
        while tokens < POOL_BATCHES * self.max_batch_tokens:
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
        for start, end in cheapest_batches([row[0] for row in rows], self.max_batch_tokens, self.forward_cost):
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
