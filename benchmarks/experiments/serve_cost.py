"""Where a scoring server's time goes on CPU, in one process: forward cost by batch shape, threads, new
shapes, tokenising, and HH-length texts scored alone against merged batches cut three ways.

    python benchmarks/experiments/serve_cost.py --model_dir MODEL --threads 1 --dtype fp32
    python benchmarks/experiments/serve_cost.py --model_dir MODEL --threads 1 --dtype bf16 --texts 64

MODEL: a reward model folder (serve_load.py --workdir W builds its random-weight opt-125m shape in W/model).
Times are this thread's CPU time (`--clock cpu`, what the work costs whatever else runs on the machine) or
wall time (`--clock wall`, needed for more than one thread), the best of `--repeats`.
"""
import argparse
import time

import torch

from benchmarks import hh_like
from evaluation_scripts.batching import cheapest_batches


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", required=True, help="A reward model folder.")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="Weights dtype.")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads.")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu", help="Thread CPU time or wall time.")
    parser.add_argument("--repeats", type=int, default=2, help="Timings per figure (the best is kept).")
    parser.add_argument("--texts", type=int, default=64, help="HH-like texts for the alone-vs-merged part.")
    parser.add_argument("--forward_cost", type=float, default=50, help="cheapest_batches' charge per forward.")
    return parser.parse_args(argv)


def greedy_fill(lengths, max_batch_tokens=8192, max_padding=0.25):
    """The cut serve.py used before cheapest_batches: rows sorted longest first, each batch grown while its
    padded tokens fit the budget and at most `max_padding` of them are padding."""
    batches, start = [], 0
    while start < len(lengths):
        end, real = start + 1, lengths[start]
        while end < len(lengths) and (end - start + 1) * lengths[start] <= max_batch_tokens \
                and real + lengths[end] >= (1 - max_padding) * (end - start + 1) * lengths[start]:
            real += lengths[end]
            end += 1
        batches.append((start, end))
        start = end
    return batches


def main(argv=None):
    from data.inputs import encode_marking_cuts
    from model.create import build_tokenizer, load_reward_model
    from model.scoring import score_ids
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    now = time.thread_time if args.clock == "cpu" else time.perf_counter
    model = load_reward_model(args.model_dir, dtype=torch.bfloat16 if args.dtype == "bf16" else None).eval()
    tokenizer = build_tokenizer(model.settings, source=args.model_dir)

    def timed(function, repeats=args.repeats):
        times = []
        for _ in range(repeats):
            start = now()
            function()
            times.append(now() - start)
        return min(times)

    def random_rows(rows, length):
        return torch.randint(10, model.config.vocab_size, (rows, length)).tolist()

    print(f"{args.dtype}, {args.threads} thread(s), {args.clock} time")
    score_ids(model, random_rows(1, 32))
    for rows, length in [(1, 128), (4, 128), (8, 128), (16, 128), (64, 128), (1, 256), (16, 256), (8, 512)]:
        batch = random_rows(rows, length)
        first = timed(lambda: score_ids(model, batch), repeats=1)
        best = timed(lambda: score_ids(model, batch))
        print(f"forward {rows:>2} x {length}: {best * 1e3:7.0f} ms = {best / rows / length * 1e3:.3f} ms per token "
              f"(first call of the shape {first * 1e3:.0f} ms)")

    rows = hh_like.make_pairs(args.texts + 32, seed=1234)[32:]
    texts = [row["prompt"] + row["chosen"] + model.end_of_conversation_token for row in rows]
    tokenising = timed(lambda: [encode_marking_cuts(tokenizer, [text], 512) for text in texts])
    print(f"tokenising one text per call: {tokenising / len(texts) * 1e3:.2f} ms per text")
    ids = sorted(encode_marking_cuts(tokenizer, texts, 512)[0], key=len, reverse=True)
    lengths, real = [len(row) for row in ids], sum(len(row) for row in ids)
    for name, cuts in [("alone", [(i, i + 1) for i in range(len(ids))]),
                       ("greedy fill (8192 tokens, 25% padding)", greedy_fill(lengths)),
                       (f"cheapest_batches (2048 tokens, forward {args.forward_cost:g})",
                        cheapest_batches(lengths, 2048, args.forward_cost))]:
        padded = sum((end - start) * lengths[start] for start, end in cuts)
        seconds = timed(lambda: [score_ids(model, ids[start:end]) for start, end in cuts], repeats=1)
        print(f"{len(ids)} HH texts, {name}: {len(cuts)} forwards, {1 - real / padded:.1%} padding, "
              f"{seconds / real * 1e3:.3f} ms per real token")


if __name__ == "__main__":
    main()
