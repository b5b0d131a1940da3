"""The sub-batch planner's forward charge, tried on the speed benchmark's timed micro batches: A/B in one process.

    python benchmarks/experiments/planner_ab.py [--scales 1 2 3] [--rounds 2] [--order grouped|dschat]

Takes the micro batches that `benchmarks/side_by_side.py --mode speed` times (steps --time_from to --time_to of
main.py's order of the same pairs: `--group_by_length`'s or DeepSpeed-Chat's; plan_cost.py builds
them) and runs each through main.py's engine (opt-125m shape, bf16, ZeRO-0, shared prompts where cheaper):
`training/sub_batches.train_micro_batch`, optimizer step included, once per charge scale, the scales taking
turns batch by batch (order reversed every other batch). A scale multiplies `forward_cost`'s charge per
forward + backward (1 = main.py's). Prints the seconds per micro step of each scale after every round.
Not measured: data loading, logging, several ranks.
"""
import argparse
import tempfile
import time

from benchmarks.experiments.plan_cost import micro_batches, pair_table
from benchmarks.experiments.sub_batch_cost import build_engine


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0, 3.0], help="Charge multipliers.")
    parser.add_argument("--rounds", type=int, default=2, help="Passes over the timed micro batches.")
    parser.add_argument("--order", choices=["grouped", "dschat"], default="grouped")
    parser.add_argument("--time_from", type=int, default=4, help="First timed micro step (as side_by_side).")
    parser.add_argument("--time_to", type=int, default=20, help="Last timed micro step.")
    args = parser.parse_args(argv)
    from data import PairCollator
    from training.accelerations import ACCELERATIONS, CpuAccelerations
    from training.sub_batches import CHEAPER, forward_cost
    with tempfile.TemporaryDirectory() as folder:
        train_set, table, pad_id = pair_table(folder)
        order = micro_batches(train_set, table, table[:, 0] if args.order == "grouped" else None, 4)
        collate = PairCollator(pad_id)
        batches = [collate([train_set[i] for i in pairs]) for pairs in order[args.time_from - 1:args.time_to]]
        engine = build_engine("125m", "bf16", folder)
        charge = forward_cost("auto", engine.module.config)
        seconds = {scale: 0.0 for scale in args.scales}
        for round_ in range(args.rounds):
            for index, batch in enumerate(batches):
                turn = args.scales if (index + round_) % 2 == 0 else args.scales[::-1]
                for scale in turn:
                    begin = time.perf_counter()
                    CpuAccelerations(tuple(ACCELERATIONS), cost=charge * scale, share=CHEAPER).train_micro_batch(
                        engine, batch)
                    seconds[scale] += time.perf_counter() - begin
            steps = len(batches) * (round_ + 1)
            print(f"round {round_ + 1}: seconds per micro step: " +
                  ", ".join(f"charge x{scale:g} {total / steps:.3f}" for scale, total in seconds.items()), flush=True)


if __name__ == "__main__":
    main()
