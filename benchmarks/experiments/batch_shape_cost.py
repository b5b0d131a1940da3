"""Two suspects for the 16 one-text clients' ratio in bf16 (docs/serving.md), each timed in one process.

    python benchmarks/experiments/batch_shape_cost.py --model_dir MODEL --dtype bf16

1. New shapes: packed forwards of 3 random texts (60-260 tokens) with their token count as it is, or rounded
   up to a multiple of 64 or 128 by one more (discarded) text, so that few distinct shapes reach oneDNN.
2. How 16 HH-like texts (what 16 one-text clients queue) are cut: serve.py's `cheapest_batches` (padded
   tokens + a forward's cost), the same charging real tokens only (packed forwards compute no padding in
   the linear layers), and all 16 in one forward.
Figures are this thread's CPU time per real token, summed over `--rounds`.
"""
import argparse
import math
import random
import time

import torch

from benchmarks import hh_like
from evaluation_scripts.batching import cheapest_batches


def real_token_cuts(lengths, max_tokens, forward_cost):
    """`cheapest_batches` charging each run its real tokens (not texts x longest) plus `forward_cost`."""
    best, cut = [0.0] + [math.inf] * len(lengths), [0] * (len(lengths) + 1)
    for end in range(1, len(lengths) + 1):
        tokens = 0
        for start in range(end - 1, -1, -1):
            tokens += lengths[start]
            if end - start > 1 and tokens > max_tokens:
                break
            if best[start] + tokens + forward_cost < best[end]:
                best[end], cut[end] = best[start] + tokens + forward_cost, start
    batches, end = [], len(lengths)
    while end:
        batches.append((cut[end], end))
        end = cut[end]
    return batches[::-1]


def main():
    from data.inputs import encode_marking_cuts
    from model.create import build_tokenizer, load_reward_model
    from model.scoring import score_ids
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_dir", required=True, help="A reward model folder.")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="bf16", help="Weights dtype.")
    parser.add_argument("--rounds", type=int, default=3, help="Rounds of each comparison.")
    parser.add_argument("--forward_cost", type=float, default=160, help="Tokens a forward's fixed cost is worth.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_reward_model(args.model_dir, dtype=torch.bfloat16 if args.dtype == "bf16" else None).eval()
    vocab = len(build_tokenizer(model.settings, source=args.model_dir))
    tokenizer = build_tokenizer(model.settings, source=args.model_dir)
    rng = random.Random(0)
    shapes = {0: [0.0, 0], 64: [0.0, 0], 128: [0.0, 0]}
    for _ in range(args.rounds):
        for multiple, total in shapes.items():
            for _ in range(8):
                texts = [[rng.randrange(3, vocab) for _ in range(rng.randint(60, 260))] for _ in range(3)]
                extra = -sum(map(len, texts)) % multiple if multiple else 0
                rows = texts + ([[rng.randrange(3, vocab) for _ in range(extra)]] if extra else [])
                start = time.thread_time()
                score_ids(model, rows)
                total[0] += time.thread_time() - start
                total[1] += sum(map(len, texts))
    for multiple, (seconds, real) in shapes.items():
        name = f"rounded up to a multiple of {multiple}" if multiple else "as they are"
        print(f"3-text packed forwards, token counts {name}: {seconds / real * 1e3:.3f} ms per real token")
    texts = [r["prompt"] + r["chosen"] + model.end_of_conversation_token for r in hh_like.make_pairs(400, seed=99)]
    encoded = encode_marking_cuts(tokenizer, texts, 512)[0]
    cuts = {"cheapest_batches (padded tokens)": lambda n: cheapest_batches(n, 2048, args.forward_cost),
            "real tokens only": lambda n: real_token_cuts(n, 2048, args.forward_cost),
            "all 16 in one forward": lambda n: [(0, len(n))]}
    totals = {name: [0.0, 0, 0] for name in cuts}
    for group in range(6 * args.rounds):
        ids = sorted(encoded[group * 16:(group + 1) * 16], key=len, reverse=True)
        lengths = [len(row) for row in ids]
        for name, rule in cuts.items():
            batches = rule(lengths)
            start = time.thread_time()
            for first, end in batches:
                score_ids(model, ids[first:end])
            totals[name][0] += time.thread_time() - start
            totals[name][1] += sum(lengths)
            totals[name][2] += len(batches)
    for name, (seconds, real, forwards) in totals.items():
        print(f"16 HH texts, {name}: {forwards / (6 * args.rounds):.1f} forwards, "
              f"{seconds / real * 1e3:.3f} ms per real token")


if __name__ == "__main__":
    main()
