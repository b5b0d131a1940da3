"""Write a reward model folder with random weights (no training, no download): for speed checks and demos.

    python evaluation_scripts/random_reward_model.py OUT                  # tiny OPT: 2 layers, 64 wide
    python evaluation_scripts/random_reward_model.py OUT --shape 125m     # opt-125m's shape
    python evaluation_scripts/random_reward_model.py OUT --shape 350m     # the card's opt-350m shape

The tokenizer is model/tiny.py's small byte-level BPE (512 tokens, trained on the fly), so a text has
more tokens than with OPT's real 50k vocabulary: compare speeds in tokens/s. Its scores mean nothing.
"""
import argparse
import os
import tempfile


def save_random_reward_model(base_dir, output_dir, shape="tiny", seed=0):
    """Wrap the causal LM folder `base_dir` ("tiny") or an OPT of `shape` with random weights (using
    base_dir's tokenizer) in a RewardModel with a random value head, saved as main.py saves one."""
    import torch

    from model.create import create_reward_model, load_tokenizer
    from model.io import save_hf_model
    from model.reward_model import END_OF_CONVERSATION
    tokenizer = load_tokenizer(base_dir, END_OF_CONVERSATION)
    torch.manual_seed(seed)
    if shape == "tiny":
        model = create_reward_model(base_dir, tokenizer, num_padding_at_beginning=1)
    else:
        from benchmarks.bench import build_model
        model = build_model(shape, tokenizer, "auto", seed)
    torch.nn.init.normal_(model.v_head.weight, std=model.v_head.weight.size(1) ** -0.5)
    os.makedirs(output_dir, exist_ok=True)
    save_hf_model(model.eval(), tokenizer, output_dir, zero_stage=0)
    return output_dir


def main(argv=None):
    from model.tiny import build_tiny_opt
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("output_dir", help="Folder to write the reward model to.")
    parser.add_argument("--shape", choices=("tiny", "125m", "350m"), default="tiny",
                        help="tiny: model/tiny.py's OPT; 125m / 350m: opt-125m / opt-350m shapes (benchmarks/bench.py).")
    parser.add_argument("--max_positions", type=int, default=2048, help="Position limit of the tiny shape.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random weights.")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as base:
        build_tiny_opt(base, max_positions=args.max_positions, seed=args.seed)
        save_random_reward_model(base, args.output_dir, args.shape, args.seed)
    print(f"wrote a random {args.shape} reward model to {args.output_dir}")


if __name__ == "__main__":
    main()
