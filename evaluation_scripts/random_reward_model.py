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


def random_reward_model(base_dir, shape="tiny", seed=0):
    """(RewardModel, tokenizer): the tiny causal LM in `base_dir` ("tiny"), or an OPT of `shape` whose config
    `model.tiny.write_opt_shape` writes to `base_dir`, with random weights (torch seeded with `seed`), built
    by `build_reward_model` as main.py builds one (DeepSpeed-Chat's end-token rule, OPT's BOS skipped)."""
    import torch

    from model.create import build_reward_model, build_tokenizer
    from model.tiny import write_opt_shape
    from utils.settings import Settings
    if shape != "tiny":
        write_opt_shape(base_dir, shape)
    settings = Settings(model_name_or_path=base_dir, num_padding_at_beginning=1)
    tokenizer = build_tokenizer(settings)
    settings = settings.replace(pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = build_reward_model(settings, tokenizer, "pretrained" if shape == "tiny" else "random")
    torch.nn.init.normal_(model.v_head.weight, std=model.v_head.weight.size(1) ** -0.5)
    return model.eval(), tokenizer


def save_random_reward_model(base_dir, output_dir, shape="tiny", seed=0):
    """`random_reward_model` saved as main.py saves a trained one; returns `output_dir`."""
    from model.io import save_hf_model
    model, tokenizer = random_reward_model(base_dir, shape, seed)
    os.makedirs(output_dir, exist_ok=True)
    save_hf_model(model, tokenizer, output_dir, zero_stage=0)
    return output_dir


def main(argv=None):
    from model.tiny import OPT_SHAPES, build_tiny_opt
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("output_dir", help="Folder to write the reward model to.")
    parser.add_argument("--shape", choices=("tiny", *OPT_SHAPES), default="tiny",
                        help="tiny: model/tiny.py's OPT; 125m / 350m: opt-125m / opt-350m shapes (model/tiny.py).")
    parser.add_argument("--max_positions", type=int, default=2048, help="Position limit of the tiny shape.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random weights.")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as base:
        if args.shape == "tiny":
            build_tiny_opt(base, max_positions=args.max_positions, seed=args.seed)
        save_random_reward_model(base, args.output_dir, args.shape, args.seed)
    print(f"wrote a random {args.shape} reward model to {args.output_dir}")


if __name__ == "__main__":
    main()
