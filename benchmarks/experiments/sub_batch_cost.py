"""What one more forward + backward costs, in padded tokens: the measurement behind training/sub_batches.py.

    python benchmarks/experiments/sub_batch_cost.py --model_shape 125m [--threads 2] [--clock wall]

Builds main.py's DeepSpeed engine (the card's ds_config.json, ZeRO-0, --dtype bf16, its optimizer groups)
around a random-weight OPT of the given shape (benchmarks/bench.py), then times engine forward + backward
(main.py's CPU rules, no optimizer step) on random batches of `rows` x `L` tokens for a grid of shapes,
taking the median of --repeats, and fits

    seconds = overhead + per_token x (rows x L) + per_token_l x (rows x L x L)

by least squares. overhead / per_token is the cost of one extra forward + backward in padded tokens (the
rows x L term): what splitting a micro batch must save to pay for itself. Measured: wall or process CPU
time of forward + backward, the engine's per-backward work included (bf16: adding every gradient into the
fp32 buffer). Not measured: the optimizer step (once per micro batch, split or not), data loading.
"""
import argparse
import json
import os
import statistics
import tempfile
import time

import numpy as np
import torch


SMALL = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, ffn_dim=1024, word_embed_proj_dim=256,
             do_layer_norm_before=True)
GRID = [(2, 16), (2, 32), (4, 16), (2, 64), (4, 32), (8, 16), (2, 128), (4, 64), (8, 32), (16, 16), (2, 256),
        (4, 128), (8, 64), (2, 512), (4, 256), (8, 128), (16, 64), (4, 512), (8, 256)]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model_shape", choices=["tiny", "small", "125m", "350m"], default="125m",
                        help="Random-weight OPT: model/tiny.py's test model, a 4-layer 256-wide OPT (small), or "
                             "benchmarks/bench.py's shapes.")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="main.py --dtype.")
    parser.add_argument("--repeats", type=int, default=3, help="Timings per shape (the median is kept).")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads.")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall time, or this process's CPU time (robust to other load; use with --threads 1).")
    parser.add_argument("--max_tokens", type=int, default=2048, help="Skip grid shapes above rows x L tokens.")
    parser.add_argument("--json", default=None, help="Write the timings and the fit here.")
    return parser.parse_args(argv)


def build_engine(shape, dtype, folder):
    """main.py's engine (config resolution, optimizer groups, scheduler, CPU accelerations) around a
    random-weight OPT (model/tiny.py's shapes, or "small" here)."""
    from evaluation_scripts.random_reward_model import random_reward_model
    from main import parse_args as main_args, setup_engine
    from model.tiny import OPT_SHAPES, build_tiny_opt
    from training import accelerations
    from utils.dist import set_single_process_defaults
    from utils.ds_config import load_ds_config, resolve_ds_config
    set_single_process_defaults()
    args, typed = main_args(["--output_dir", folder, "--dtype", dtype, "--gradient_accumulation_steps", "1",
                             "--per_device_train_batch_size", "1"])
    chosen = accelerations.choose(args, "cpu")
    config, _ = resolve_ds_config(load_ds_config(args.deepspeed_config), args, typed, 1, "cpu", True)
    OPT_SHAPES.setdefault("small", SMALL)
    base = build_tiny_opt(os.path.join(folder, "tiny")) if shape == "tiny" else os.path.join(folder, shape)
    model, _ = random_reward_model(base, shape, seed=0)
    engine = setup_engine(args, model.train(), config, 1000, chosen.uses("fused_adamw"))
    accelerations.install(chosen, args, engine)
    return engine


def time_shape(engine, rows, length, repeats, now):
    """Median seconds of engine forward + backward on `rows` pairs-halves of `length` tokens."""
    from training.cpu_speed import cpu_training_speedups
    vocab = engine.module.config.vocab_size
    generator = torch.Generator().manual_seed(rows * 1000 + length)
    ids = torch.randint(4, vocab, (rows, length), generator=generator)
    ids[:, 0] = 2  # OPT's BOS; chosen and rejected differ from position 1 on
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    engine.set_gradient_accumulation_boundary(False)  # accumulate only: no optimizer step, no reduction
    times = []
    for _ in range(repeats + 1):  # the first call warms up
        start = now()
        with cpu_training_speedups(engine.module, ids):
            loss = engine(**batch)["loss"]
        engine.backward(loss)
        times.append(now() - start)
    return statistics.median(times[1:])


def fit(points):
    """Least squares of seconds = overhead + a x tokens + b x tokens x L; returns (overhead, a, b)."""
    tokens = np.array([r * l for r, l, _ in points], dtype=float)
    lengths = np.array([l for _, l, _ in points], dtype=float)
    seconds = np.array([s for _, _, s in points])
    design = np.stack([np.ones_like(tokens), tokens, tokens * lengths], axis=1)
    weights = 1 / seconds  # relative error: the small shapes (the overhead) count as much as the large ones
    solution, *_ = np.linalg.lstsq(design * weights[:, None], seconds * weights, rcond=None)
    return tuple(float(x) for x in solution)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    now = time.perf_counter if args.clock == "wall" else time.process_time
    with tempfile.TemporaryDirectory() as folder:
        engine = build_engine(args.model_shape, args.dtype, folder)
        engine.train()
        points = []
        for rows, length in GRID:
            if rows * length > args.max_tokens:
                continue
            seconds = time_shape(engine, rows, length, args.repeats, now)
            points.append((rows, length, seconds))
            print(f"rows {rows:3d} x L {length:4d} = {rows * length:5d} tokens: {seconds * 1000:8.1f} ms", flush=True)
    overhead, per_token, per_token_l = fit(points)
    result = {"settings": vars(args), "points": points, "overhead_s": overhead, "per_token_s": per_token,
              "per_token_l_s": per_token_l, "overhead_tokens": overhead / per_token,
              "attention_l": per_token / per_token_l if per_token_l > 0 else None}
    print(f"fit: {overhead * 1000:.1f} ms per forward + backward, {per_token * 1e6:.1f} us per padded token "
          f"(+ {per_token_l * 1e9:.2f} ns x L): one forward + backward costs {result['overhead_tokens']:.0f} tokens")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
