"""Measuring helpers for benchmarks/bench.py: clocks, a bf16 matmul probe, peak RSS, a fresh process."""
import concurrent.futures
import multiprocessing
import resource
import time

import torch


def clock(kind):
    return time.perf_counter if kind == "wall" else time.process_time


def matmul_gflops(size=2048, reps=5, now=time.perf_counter):
    """Best-of-`reps` bf16 (size x size) @ (size x size) throughput, GFLOP/s."""
    a = torch.randn(size, size, dtype=torch.bfloat16)
    b = torch.randn(size, size, dtype=torch.bfloat16)
    a @ b
    best = float("inf")
    for _ in range(reps):
        start = now()
        a @ b
        best = min(best, now() - start)
    return 2 * size ** 3 / best / 1e9


def max_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def in_fresh_process(function, *args):
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(function, *args).result()
