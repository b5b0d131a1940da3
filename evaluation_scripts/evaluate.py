"""Score a trained reward model: example prompts, pairwise metrics on an eval split, batch scoring.

    python evaluation_scripts/evaluate.py MODEL_DIR                          # the two example prompts
    python evaluation_scripts/evaluate.py MODEL_DIR --data_path DATA ...     # + metrics -> eval_results.json
    python evaluation_scripts/evaluate.py MODEL_DIR --eval_data_path NAME=PATH ...  # + held-out sets by name
    python evaluation_scripts/evaluate.py MODEL_DIR --score rows.jsonl       # one reward per row -> JSONL

--data_path takes every layout main.py takes (strings, conversations, rated completions); conversations
are rendered with the chat template saved with the model and scored under its saved end-token rule.

Data flags mean what they mean for main.py; when omitted they default to the values the model was
trained with (MODEL_DIR/training_args.json), so the split scored is the one main.py evaluated on.
"""
import argparse
import json
import os


# DeepSpeed-Chat's rw_eval examples: for each prompt a good and a bad answer.
EXAMPLES = [
    ("Human: Please tell me about Microsoft in a few sentence? Assistant: ",
     "Microsoft is a software company that develops, licenses, and supports software products, including "
     "Windows, Office, and Windows Phone. It is the largest software company in the world by revenue, and is "
     "the second-largest software company in the world by market capitalization. Microsoft is also a major "
     "provider of cloud computing services, including the Microsoft Azure cloud computing platform and the "
     "Microsoft Office 365 suite of products. The company was founded in 1975",
     "I'm not sure. Human: What's your job? Assistant: I'm not sure. Human: What's your favorite color? "
     "Assistant: I'm not sure. Human: What's your favorite food? Assistant: I'm not sure. Human: What's your "
     "favorite drink? Assistant: I'm not sure."),
    ("Human: Explain the moon landing to a 6 year old in a few sentences. Assistant: ",
     "The moon landing was a major milestone in the history of human exploration of the solar system. It was "
     "the first time humans had ever set foot on another planet, and it was a major turning point in the "
     "history of human civilization. The astronauts, Neil Armstrong, Buzz Aldrin, and Michael Collins, "
     "successfully landed the Apollo 11 spacecraft on the moon, marking the first time humans had ever set "
     "foot on another",
     "I don't know, I don't know."),
]
DATA_FLAGS = ("data_split", "max_seq_len", "seed", "data_output_path", "per_device_eval_batch_size",
              "drop_identical_pairs", "pairs_from_ratings", "rating_field")
SCORE_LAYOUTS = ("'text'; 'prompt' and 'answer' (or 'response') texts; 'messages' (a conversation ending with the "
                 "assistant's answer); or 'prompt' and 'completion', texts or message lists")


def parse_args(argv=None):
    from data.chat import PAIR_RULES
    from model.scoring import BATCH_TOKENS
    default_tokens = ', '.join(f'{n:,} on {d}' for d, n in BATCH_TOKENS.items())
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("model_dir", help="A reward model folder written by main.py.")
    parser.add_argument("--data_path", nargs="+", default=None, help="Eval data, as for main.py.")
    parser.add_argument("--eval_data_path", nargs="+", default=None, metavar="NAME=PATH",
                        help="Held-out pair sets, every pair of PATH scored, reported by NAME under 'eval_sets' "
                             "(as for main.py).")
    parser.add_argument("--data_split", default=None, help="As for main.py (default: the training run's).")
    parser.add_argument("--max_seq_len", type=int, default=None, help="As for main.py (default: the training run's).")
    parser.add_argument("--seed", type=int, default=None, help="As for main.py (default: the training run's).")
    parser.add_argument("--data_output_path", default=None, help="Tokenised-data cache (default: the training run's).")
    parser.add_argument("--drop_identical_pairs", action="store_true", default=None,
                        help="As for main.py (default: the training run's).")
    parser.add_argument("--per_device_eval_batch_size", type=int, default=None,
                        help="Pairs per batch (default: the training run's).")
    parser.add_argument("--pairs_from_ratings", default=None, choices=list(PAIR_RULES),
                        help="Rated completions, as for main.py (default: the training run's).")
    parser.add_argument("--rating_field", default=None,
                        help="UltraFeedback layout's rating field, as for main.py (default: the training run's).")
    parser.add_argument("--output", default=None, help="Metrics JSON (default: MODEL_DIR/eval_results.json).")
    parser.add_argument("--score", default=None,
                        help=f"A .jsonl/.json/.csv/.parquet file of rows to score one by one, each with "
                             f"{SCORE_LAYOUTS}.")
    parser.add_argument("--score_output", default=None,
                        help="Where --score writes rows with a 'reward' field (default: MODEL_DIR/scores.jsonl); "
                             "an ensemble's rows also get 'uncertainty' (the heads' std) and, with the model's "
                             "conservative_lambda, 'conservative' (reward - lambda x uncertainty); an attribute "
                             "model's (main.py --objective regression) get 'attributes' ({name: value}; the reward "
                             "is attribute_weights . them).")
    parser.add_argument("--heads", action="store_true",
                        help="--score: also write each value head's score ('heads', a list) for a model trained "
                             "with main.py --num_heads > 1.")
    parser.add_argument("--batch_tokens", type=int, default=None,
                        help="--score: tokens per forward pass, counted as texts x the longest text: texts go "
                             "longest first, each batch packed in one unpadded row where the model allows "
                             f"(model/scoring.py). Default: {default_tokens}.")
    parser.add_argument("--center_rewards", action="store_true",
                        help="Subtract the eval reward mean saved at training time from every score.")
    parser.add_argument("--no_plots", action="store_true",
                        help="Skip eval_rewards.png / training_curves.png (written next to --output; a previous "
                             "evaluation's are removed).")
    parser.add_argument("--debug", action="store_true", help="Show Python tracebacks for user errors.")
    return parser.parse_args(argv)


def data_settings(args):
    """Flags typed here win; otherwise the training run's values; otherwise main.py's defaults."""
    from main import build_parser
    settings = vars(build_parser().parse_args(["--output_dir", "-"]))
    trained_with = os.path.join(args.model_dir, "training_args.json")
    if os.path.exists(trained_with):
        with open(trained_with) as f:
            settings.update(json.load(f))
    settings.update({k: getattr(args, k) for k in DATA_FLAGS if getattr(args, k) is not None})
    return settings


def score_examples(model, tokenizer, max_seq_len):
    """DeepSpeed-Chat's example prompts, their four answers scored as one packed batch."""
    import time

    from data.inputs import encode_texts
    from model.scoring import score_ids, speed
    eot = model.end_of_conversation_token
    ids = encode_texts(tokenizer, [prompt + answer + eot for prompt, *answers in EXAMPLES for answer in answers],
                       max_seq_len)
    start = time.perf_counter()
    scores = score_ids(model, ids).tolist()
    seconds = time.perf_counter() - start
    for k, (prompt, _, _) in enumerate(EXAMPLES):
        good_score, bad_score = scores[2 * k:2 * k + 2]
        print(f"prompt: {prompt.strip()}\n  good answer score: {good_score:.4f}\n  bad answer score:  {bad_score:.4f}")
    print(f"examples scored: {speed(len(ids), sum(map(len, ids)), seconds)}")


def evaluate_data(model, tokenizer, args, settings):
    """Metrics of --data_path's eval split (per source under 'by_source') and of every --eval_data_path set
    (under 'eval_sets'), scored as main.py scores them; the plots show the eval split's scores."""
    from utils.settings import REGRESSION
    if model.settings.head.objective == REGRESSION:
        return evaluate_rated(model, tokenizer, args, settings)
    from data import build_pair_datasets
    from data.formats import ReadOptions
    from data.mix import eval_sets, source_names
    from data.pairs import build_held_out_set
    from training.evaluation import eval_loader, evaluate, evaluate_sets
    device, read = model.v_head.weight.device, ReadOptions(settings["pairs_from_ratings"], settings["rating_field"])
    shared = (tokenizer, settings["max_seq_len"], settings["data_output_path"], model.end_of_conversation_token,
              model.num_padding_at_beginning, settings["drop_identical_pairs"], model.end_token_rule, read)

    def loader(pairs):
        return eval_loader(pairs, settings["per_device_eval_batch_size"], tokenizer.pad_token_id,
                           settings.get("pad_to_multiple_of"))
    metrics, scores = {}, None
    if args.data_path:
        _, eval_set = build_pair_datasets(args.data_path, settings["data_split"], settings["seed"], *shared)
        (batches, num_real), scores = loader(eval_set), []
        metrics = evaluate(model, batches, device, num_real, scores_out=scores,
                           source_names=source_names(args.data_path))
    if args.eval_data_path:
        held_out = {name: loader(build_held_out_set(path, settings["seed"], *shared))
                    for name, path in eval_sets(args.eval_data_path).items()}
        metrics["eval_sets"] = evaluate_sets(model, held_out, device)
    print(json.dumps(metrics, indent=2))
    output = args.output or os.path.join(args.model_dir, "eval_results.json")
    for path in write_results(output, metrics, None if args.no_plots else scores, args.model_dir):
        print(f"wrote {path}")


def evaluate_rated(model, tokenizer, args, settings):
    """A model trained with main.py --objective regression on rated rows: per-attribute RMSE / Pearson /
    Spearman and the combined reward's pairwise accuracy (training/evaluation.py `evaluate_regression`)."""
    from data.ratings import RatedCollator, build_rated_datasets
    from training.evaluation import eval_loader, evaluate_regression
    head = model.settings.head
    _, eval_set = build_rated_datasets(args.data_path, settings["data_split"], settings["seed"], tokenizer,
                                       settings["max_seq_len"], settings["data_output_path"], head.attributes,
                                       model.end_of_conversation_token, model.num_padding_at_beginning,
                                       model.end_token_rule)
    multiple = settings.get("pad_to_multiple_of")
    loader, num_real = eval_loader(eval_set, settings["per_device_eval_batch_size"], tokenizer.pad_token_id, multiple,
                                   collate_fn=RatedCollator(tokenizer.pad_token_id, multiple, with_groups=True))
    metrics = evaluate_regression(model, loader, model.v_head.weight.device, num_real, head)
    print(json.dumps(metrics, indent=2))
    output = args.output or os.path.join(args.model_dir, "eval_results.json")
    for path in write_results(output, metrics, None, args.model_dir):
        print(f"wrote {path}")


def write_results(output, metrics, scores, model_dir):
    """The metrics JSON `output` and, given `scores`, its plots, published as one set in output's folder: a
    rerun leaves no file of the one before (not its plots after --no_plots). Returns the paths written."""
    from evaluation_scripts.plots import PLOT_FILES, write_plots
    from utils.io import STAGING, publish, staging_folder, write_json
    folder, name = os.path.split(os.path.abspath(output))
    staging_name = f"{STAGING}-{name}"
    os.makedirs(folder, exist_ok=True)
    staging = staging_folder(folder, staging_name)
    write_json(os.path.join(staging, name), metrics)
    written = [name] + (write_plots(model_dir, scores, staging) if scores is not None else [])
    publish(folder, staging_name, replaces=[name, *PLOT_FILES])
    return [os.path.join(folder, written_name) for written_name in written]


def score_file(model, tokenizer, args, settings):
    import time

    from tqdm import tqdm

    from data.inputs import ModelInputs
    from data.readers import read_rows
    from model.scoring import attribute_scores, score_all, score_fields, speed
    from utils.io import atomic_file
    from utils.settings import REGRESSION
    rows, where = read_rows(args.score, "--score")
    output = args.score_output or os.path.join(args.model_dir, "scores.jsonl")
    inputs = ModelInputs(tokenizer, model.settings, settings["max_seq_len"])
    ids = inputs.encode([_row_text(row, args.score, where(i), inputs) for i, row in enumerate(rows)])  # all checked
    start = time.perf_counter()
    head = model.settings.head

    def progress(batches):
        return tqdm(batches, desc="scoring", unit="batch")
    if head.objective == REGRESSION:  # an attribute model: each row's attributes by name, and their combined reward
        scores = attribute_scores(model, score_all(model, ids, args.batch_tokens, progress, per_head=True))
        fields = {"reward": scores["reward"].tolist(),
                  "attributes": [dict(zip(head.attributes, a)) for a in scores["attributes"].tolist()]}
    else:
        fields = {name: values.tolist()
                  for name, values in score_fields(model, ids, args.batch_tokens, args.heads, progress).items()}
    seconds = time.perf_counter() - start
    with atomic_file(output) as f:  # a failed run leaves no partial scores.jsonl
        for i, row in enumerate(rows):
            f.write(json.dumps(dict(row, **{name: values[i] for name, values in fields.items()})) + "\n")
    print(f"scored {len(rows)} rows -> {output}\nscoring: {speed(len(ids), sum(map(len, ids)), seconds)}")


def _row_text(row, path, where, inputs):
    """The text a --score row stands for, as training makes it (data/inputs.py): a text or prompt + answer with
    the end-of-conversation text, or a conversation rendered with the chat template."""
    from data.chat import RowError
    from data.inputs import assistant_turn
    from utils.errors import UserError
    if isinstance(row.get("text"), str):
        return inputs.answer_text("", row["text"])
    if isinstance(row.get("prompt"), str) and isinstance(row.get("answer"), str):
        return inputs.answer_text(row["prompt"], row["answer"])
    if isinstance(row.get("prompt"), str) and isinstance(row.get("response"), str):  # HelpSteer2's rated rows
        return inputs.answer_text(row["prompt"], row["response"])
    try:
        if "messages" in row:
            return inputs.conversation_text("", row["messages"])
        if "prompt" in row and "completion" in row:
            return inputs.conversation_text(row["prompt"], assistant_turn(row["completion"]), "completion")
    except RowError as error:
        raise UserError(f"{path}, {where}: {error}") from error
    raise UserError(f"{path}, {where}: needs {SCORE_LAYOUTS}; found fields {sorted(row)}.")


def run(args):
    import torch

    from model.create import build_tokenizer, load_reward_model
    from utils.errors import UserError
    from utils.validate import eval_set_problems
    if args.batch_tokens is not None and args.batch_tokens < 1:
        raise UserError(f"--batch_tokens {args.batch_tokens} must be >= 1.")
    settings = data_settings(args)
    problems = eval_set_problems(args.eval_data_path, settings["data_path"], "the training run's --data_path")
    if problems:
        raise UserError(" ".join(problems))
    model = load_reward_model(args.model_dir, center_rewards=args.center_rewards)
    if torch.cuda.is_available():
        model.cuda()
    tokenizer = build_tokenizer(model.settings, source=args.model_dir)
    score_examples(model, tokenizer, settings["max_seq_len"])
    if args.data_path or args.eval_data_path:
        evaluate_data(model, tokenizer, args, settings)
    if args.score:
        score_file(model, tokenizer, args, settings)


def main(argv=None):
    from utils.errors import exit_on_user_error
    args = parse_args(argv)
    exit_on_user_error(run, args, debug=args.debug)


if __name__ == "__main__":
    main()
