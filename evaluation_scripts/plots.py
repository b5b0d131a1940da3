"""PNG pictures of a reward model's behaviour (matplotlib is optional; the JSON files stay the truth)."""
import json
import os

from model.reward_model import LN2


def matplotlib_pyplot():
    """pyplot with a file-only backend, or None when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def reward_histogram(scores, path, plt):
    """Overlaid histograms of chosen and rejected end scores; `scores` is [(chosen, rejected), ...]."""
    chosen, rejected = zip(*scores)
    figure, axis = plt.subplots(figsize=(7, 4))
    bins = 40
    axis.hist(chosen, bins=bins, alpha=0.6, label=f"chosen (mean {sum(chosen) / len(chosen):.3f})")
    axis.hist(rejected, bins=bins, alpha=0.6, label=f"rejected (mean {sum(rejected) / len(rejected):.3f})")
    accuracy = sum(c > r for c, r in scores) / len(scores)
    axis.set(title=f"End-token rewards on {len(scores)} eval pairs (accuracy {accuracy:.3f})",
             xlabel="reward", ylabel="pairs")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def training_curves(log_path, path, plt):
    """Training loss per step and eval accuracy from main.py's train_log.jsonl; False if it has none."""
    with open(log_path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    train = [(r["step"], r["loss"]) for r in records if r["kind"] == "train"]
    evals = [(r["step"], r["accuracy"]) for r in records if r["kind"] == "rewards"]
    if not train and not evals:
        return False
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
    if train:
        loss_axis.plot(*zip(*train))
    loss_axis.axhline(LN2, color="grey", linestyle="--", linewidth=0.8, label="ln 2 (chance)")
    loss_axis.set(title="training loss", xlabel="optimizer step", ylabel="loss")
    loss_axis.legend()
    if evals:
        accuracy_axis.plot(*zip(*evals), marker="o")
    accuracy_axis.set(title="eval accuracy", xlabel="optimizer step", ylabel="accuracy", ylim=(0, 1))
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


PLOT_FILES = ("eval_rewards.png", "training_curves.png")


def write_plots(model_dir, scores, output_dir):
    """Write eval_rewards.png (and training_curves.png when the training log exists) to output_dir; returns
    the names written."""
    plt = matplotlib_pyplot()
    if plt is None:
        print("matplotlib is not installed: no plots (pip install matplotlib)")
        return []
    histogram, curves = PLOT_FILES
    reward_histogram(scores, os.path.join(output_dir, histogram), plt)
    log_path = os.path.join(model_dir, "train_log.jsonl")
    if os.path.exists(log_path) and training_curves(log_path, os.path.join(output_dir, curves), plt):
        return [histogram, curves]
    return [histogram]
