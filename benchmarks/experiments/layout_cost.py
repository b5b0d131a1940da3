"""What a micro batch with shared prompts costs in three layouts of the same tokens: no training run.

    python benchmarks/experiments/layout_cost.py --starts 86 120 40 --rests 95 40 120 [--pairs 4] [--repeats 4]

For each (shared start P, rest S) it builds B random pairs whose rows share their first P tokens and differ in
the S after, and times forward + backward through main.py's engine (sub_batch_cost.py's
`build_engine`: opt-125m shape, bf16, ZeRO-0, main.py's CPU rules), the layouts taking turns:
- shared: main.py's `--share_prompt` forward (model/shared_prompt.py): every pair's P + 2S tokens in one
  unpadded row, attention on B padded rows of P and 2B of S attending to P + S;
- packed: B rows of P + 2S tokens, one call: each pair as [start | chosen rest | rejected rest] with a block
  mask, attention included (eager and SDPA compute every masked score too, so the mask is left out);
- one call, short rows: 2B rows of (P + 2S) / 2 tokens, the same token count with the least attention.
Prints the median seconds (first run of each dropped) and each layout against `shared`. Not measured: the
optimizer step (the same for all), data loading, sub-batch planning.
"""
import argparse
import tempfile
import time

import numpy as np
import torch

from benchmarks.experiments.sub_batch_cost import build_engine
from training.cpu_speed import cpu_training_speedups


def pair_rows(pairs, start, rest, generator):
    """(2B, start + rest) token rows, chosen then rejected: each pair's rows share their first `start` tokens."""
    prefix = torch.randint(4, 50_000, (pairs, start), generator=generator)
    prefix[:, 0] = 2  # OPT's BOS
    chosen, rejected = (torch.randint(4, 50_000, (pairs, rest), generator=generator) for _ in range(2))
    ids = torch.cat([torch.cat([prefix, chosen], 1), torch.cat([prefix, rejected], 1)])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def layouts(pairs, start, rest, generator):
    """{name: (batch, share_prompt)} for one (P, S): the same P + 2S tokens per pair in each."""
    per_pair = start + 2 * rest
    return {"shared": (pair_rows(pairs, start, rest, generator), True),
            "packed": (pair_rows(pairs // 2, per_pair // 2, per_pair - per_pair // 2, generator), False),
            "short rows": (pair_rows(pairs, per_pair // 4, per_pair // 2 - per_pair // 4, generator), False)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--starts", type=int, nargs="+", default=[86, 120, 40], help="Shared starts P.")
    parser.add_argument("--rests", type=int, nargs="+", default=[95, 40, 120], help="Rests S (one per start).")
    parser.add_argument("--pairs", type=int, default=4, help="Pairs per micro batch (even).")
    parser.add_argument("--repeats", type=int, default=4, help="Turns per layout (the first is dropped).")
    args = parser.parse_args(argv)
    if len(args.starts) != len(args.rests) or args.pairs % 2:
        parser.error("give one rest per start and an even --pairs")
    generator = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        engine = build_engine("125m", "bf16", folder)

        def forward_backward(batch, share):
            with cpu_training_speedups(engine.module, batch["input_ids"]):
                loss = engine(**batch, share_prompt=share)["loss"]
            engine.backward(loss)

        print("P | S | layout | tokens | seconds (median) | vs shared")
        for start, rest in zip(args.starts, args.rests):
            runs = layouts(args.pairs, start, rest, generator)
            seconds = {name: [] for name in runs}
            for _ in range(args.repeats):
                for name, (batch, share) in runs.items():
                    begin = time.perf_counter()
                    forward_backward(batch, share)
                    seconds[name].append(time.perf_counter() - begin)
                engine.step()  # clears the accumulated gradients
            medians = {name: float(np.median(times[1:])) for name, times in seconds.items()}
            for name in runs:
                print(f"{start} | {rest} | {name} | {args.pairs * (start + 2 * rest)} | {medians[name]:.3f} | "
                      f"{medians[name] / medians['shared']:.3f}", flush=True)


if __name__ == "__main__":
    main()
