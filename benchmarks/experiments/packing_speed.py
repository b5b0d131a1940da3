"""Offline scoring of a benchmark file, padded (as before packing) against packed, side by side in one run.

    python benchmarks/experiments/packing_speed.py MODEL --data chat_filtered.json --dtype bf16 --threads 1

Encodes the file's texts as evaluation_scripts/benchmark.py does (RM-Bench layout by default), then scores
all of them with `model.scoring.score_all` in each variant (`--variants`: padded or packed rows, batches of
up to N tokens), the variants taking turns in each round (reversed every other round) so that other work on
the machine slows them alike. Prints each variant's seconds per round and its speed relative to the first.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", help="A reward model folder (e.g. evaluation_scripts/random_reward_model.py's).")
    parser.add_argument("--data", nargs="+", required=True, help="Benchmark file(s) in --benchmark's layout.")
    parser.add_argument("--benchmark", default="rmbench", help="Layout of --data (benchmark.py's names).")
    parser.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16"), help="Weights dtype.")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's).")
    parser.add_argument("--rounds", type=int, default=2, help="Rounds; each scores every text once per variant.")
    parser.add_argument("--limit", type=int, default=0, help="Only the first N items of each file (0: all).")
    parser.add_argument("--variants", nargs="+", default=["padded:16384", "packed:16384", "packed:2048"],
                        help="padded|packed:BATCH_TOKENS; the first is the reference of the ratios.")
    return parser.parse_args(argv)


def main(argv=None):
    import torch

    from data.inputs import ModelInputs
    from evaluation_scripts import benchmark
    from model.create import model_max_positions
    from model.scoring import score_all
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    bench_args = benchmark.parse_args([args.model_dir, "--benchmark", args.benchmark, "--data", *args.data,
                                       "--dtype", args.dtype, "--device", "cpu", "--limit", str(args.limit)])
    items = benchmark.load_items(bench_args)
    model, tokenizer, device, dtype = benchmark.load_model(bench_args)
    max_seq_len = benchmark.max_len(bench_args, model_max_positions(args.model_dir))
    inputs = ModelInputs(tokenizer, model.settings, max_seq_len)
    sequences, _, cut = benchmark.encode(items, inputs, benchmark.resolve_format(bench_args, tokenizer))
    tokens = sum(map(len, sequences))
    print(f"{len(items)} items, {len(sequences)} texts, {tokens:,} tokens ({cut} cut at {max_seq_len}); "
          f"{dtype} on {device}, {torch.get_num_threads()} threads")
    variants = [(name.split(":")[0] == "packed", int(name.split(":")[1])) for name in args.variants]
    seconds = {name: [] for name in args.variants}
    reference = None
    for round_index in range(args.rounds):
        order = list(zip(args.variants, variants))
        for name, (pack, batch_tokens) in order if round_index % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            scores = score_all(model, sequences, batch_tokens, pack=pack)
            seconds[name].append(time.perf_counter() - start)
            reference = scores if reference is None else reference
            print(f"round {round_index + 1} | {name:>14} | {seconds[name][-1]:7.1f} s | "
                  f"{len(sequences) / seconds[name][-1]:6.2f} texts/s | max |score - first| "
                  f"{(scores - reference).abs().max().item():.1e}", flush=True)
    first = sum(seconds[args.variants[0]])
    for name in args.variants:
        total = sum(seconds[name])
        print(f"{name:>14}: {total / args.rounds:7.1f} s per pass, {len(sequences) * args.rounds / total:6.2f} "
              f"texts/s, {first / total:.2f}x {args.variants[0]}")


if __name__ == "__main__":
    main()
