"""Where one training step of main.py's engine spends its time: torch profiler, one batch shape.

    python benchmarks/experiments/step_profile.py --model_shape 125m --rows 8 --length 198 [--dtype bf16] [--top 25]

Builds main.py's engine around a random-weight OPT (sub_batch_cost.py's `build_engine`: the card's
ds_config.json, ZeRO-0, its optimizer and groups), runs forward + backward + `engine.step()` on random
rows x length batches with main.py's CPU rules: two warm-up steps, one timed step (wall clock), where main.py
replaced DeepSpeed's bf16 optimizer step (training/bf16_step.py) that step and DeepSpeed's own in turn, and one
profiled step. Prints the times and the profiler's table by self CPU time. Not measured: data loading,
sub-batches, shared prompts (one plain pass per step).
"""
import argparse
import tempfile
import time

import numpy as np
import torch

from benchmarks.experiments.sub_batch_cost import build_engine
from training.cpu_speed import cpu_training_speedups


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_shape", choices=["tiny", "small", "125m", "350m"], default="125m")
    parser.add_argument("--rows", type=int, default=8, help="Rows per batch (2 per pair).")
    parser.add_argument("--length", type=int, default=198, help="Tokens per row.")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--top", type=int, default=25, help="Rows of the profiler table.")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        engine = build_engine(args.model_shape, args.dtype, folder)
        ids = torch.randint(4, engine.module.config.vocab_size, (args.rows, args.length),
                            generator=torch.Generator().manual_seed(0))
        ids[:, 0] = 2  # OPT's BOS
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

        def step():
            with cpu_training_speedups(engine.module, ids):
                loss = engine(**batch)["loss"]
            engine.backward(loss)
            start = time.perf_counter()
            engine.step()
            return time.perf_counter() - start

        step(), step()
        start = time.perf_counter()
        step()
        seconds = time.perf_counter() - start
        print(f"step: {seconds:.3f} s ({args.rows} x {args.length}, {args.model_shape}, {args.dtype})")
        if "step" in vars(engine.optimizer):  # training/bf16_step.py's: time it against DeepSpeed's own, in turn
            buffered = engine.optimizer.step
            times = {"buffered": [], "DeepSpeed's": []}
            for _ in range(4):
                for name in times:
                    engine.optimizer.step = buffered
                    if name != "buffered":
                        del engine.optimizer.step
                    times[name].append(step())
            engine.optimizer.step = buffered
            medians = ", ".join(f"{name} {np.median(t):.3f} s" for name, t in times.items())
            print(f"optimizer step, median of 4: {medians}")
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            step()
        print(profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))


if __name__ == "__main__":
    main()
