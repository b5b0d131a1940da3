"""What the speed benchmark's micro batches cost, by sample order: no model is run.

    python benchmarks/experiments/plan_cost.py [--time_from 4 --time_to 20] [--key total shared_rest]

Builds the data of `benchmarks/side_by_side.py --mode speed` (same pairs, tokenizer, split and seed), orders
it as main.py does (DeepSpeed-Chat's sampler; `--group_by_length`'s sampler keyed by each pair's total length,
or by other keys given in --key) and prints, over the timed micro steps and over the whole epoch, per micro
step: the tokens a perfect batching computes (every pair's shared start once plus both rests, no padding,
`shared_lengths`), the sub-batch planner's token-equivalents (training/sub_batches.py `plan`/`run_cost`, shared
prompts where cheaper, forward charges included) and its base-model passes. Keys: total = the longer row
(main.py's); shared_rest = the rest after the shared start, then the shared start (not in main.py).
"""
import argparse
import os
import tempfile
from types import SimpleNamespace

import numpy as np

from benchmarks import hh_like, side_by_side


def pair_table(folder):
    """(train dataset, (N, 2) [total length, shared length] per pair, PAD id) of the benchmark's data."""
    from data import PairCollator
    from data.pairs import build_pair_datasets
    from model.create import load_tokenizer
    from model.reward_model import END_OF_CONVERSATION, shared_lengths
    args = SimpleNamespace(train_pairs=1000, eval_pairs=16, seed=0, max_seq_len=512)  # side_by_side speed defaults
    train, test = side_by_side.make_pairs(args)
    hh_like.build_tokenizer(os.path.join(folder, "tok"), train)
    data = side_by_side.save_pairs(os.path.join(folder, "data"), train, test)
    tokenizer = load_tokenizer(os.path.join(folder, "tok"), END_OF_CONVERSATION, False)
    train_set, _ = build_pair_datasets([data], ",".join(map(str, side_by_side.SHARES)), 1234, tokenizer,
                                       args.max_seq_len, os.path.join(folder, "cache"), END_OF_CONVERSATION, 1)
    collate = PairCollator(tokenizer.pad_token_id)
    table = []
    for row in train_set:
        batch = collate([row])
        total = int(batch["attention_mask"].sum(dim=1).max())
        shared = shared_lengths(batch["input_ids"], batch["attention_mask"], tokenizer.pad_token_id, 1,
                                "deepspeed_chat")
        table.append((total, int(shared[0])))
    return train_set, np.array(table, dtype=np.int64), tokenizer.pad_token_id


def micro_batches(train_set, table, key, batch_size):
    from data.sampler import LengthGroupedSampler, train_sampler
    if key is None:
        sampler = train_sampler(train_set, batch_size, False, 1234, 1, 0)
    else:
        sampler = LengthGroupedSampler(train_set, batch_size=batch_size, num_replicas=1, rank=0, seed=1234,
                                       lengths=key)
    order = list(sampler)
    return [order[i:i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]


def batch_cost(table, pairs, charge):
    """(perfect tokens, planner token-equivalents, base-model passes) of one micro batch."""
    from training.sub_batches import plan, run_cost
    lengths, shared = table[pairs, 0].tolist(), table[pairs, 1].tolist()
    perfect = sum(s + 2 * (n - s) for n, s in zip(lengths, shared))
    runs = plan(lengths, charge, shared=shared)
    price = sum(run_cost([lengths[i] for i in run], [shared[i] for i in run], charge)[0] for run in runs)
    return perfect, price, len(runs)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--time_from", type=int, default=4, help="First timed micro step (as side_by_side).")
    parser.add_argument("--time_to", type=int, default=20, help="Last timed micro step.")
    parser.add_argument("--key", nargs="*", choices=["total", "shared_rest"], default=["total", "shared_rest"],
                        help="Length-grouping keys to compare with DeepSpeed-Chat's order.")
    args = parser.parse_args(argv)
    from training.sub_batches import FORWARD_COST_X_WIDTH
    charge = FORWARD_COST_X_WIDTH["cpu"] / 768  # the opt-125m shape's hidden size
    with tempfile.TemporaryDirectory() as folder:
        train_set, table, _ = pair_table(folder)
    total, shared = table[:, 0], table[:, 1]
    keys = {"total": total, "shared_rest": (total - shared) * 1024 + shared}
    orders = {"DeepSpeed-Chat's order": None, **{f"grouped by {k}": keys[k] for k in args.key}}
    print(f"{len(table)} pairs: mean length {total.mean():.1f}, shared start {shared.mean():.1f}")
    print("order | steps | perfect tokens | planner token-equivalents | base-model passes")
    for name, key in orders.items():
        batches = micro_batches(train_set, table, key, 4)
        for label, chosen in (("timed", batches[args.time_from - 1:args.time_to]), ("epoch", batches)):
            costs = np.array([batch_cost(table, b, charge) for b in chosen])
            print(f"{name} | {label} ({len(chosen)}) | {costs[:, 0].mean():.0f} | {costs[:, 1].mean():.0f} | "
                  f"{costs[:, 2].mean():.2f}")


if __name__ == "__main__":
    main()
