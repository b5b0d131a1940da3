"""One validation pass over main.py's flags and the DeepSpeed config, before any model loads.

Every problem found is gathered into one UserError (one line per problem), each naming the flag or
config key, what is wrong and what to use instead.
"""
import difflib
import math
import os
import re

from utils.errors import UserError
from utils.io import output_folder_problem

POSITIVE_INT, NON_NEGATIVE_INT, POSITIVE, NON_NEGATIVE, PROBABILITY = (
    "an integer >= 1", "an integer >= 0", "a finite number > 0", "a finite number >= 0", "a number in [0, 1)")
FLAG_RULES = {  # flag -> what its value must be (None values mean "use the default" and are skipped)
    "per_device_train_batch_size": POSITIVE_INT, "per_device_eval_batch_size": POSITIVE_INT,
    "gradient_accumulation_steps": POSITIVE_INT, "num_train_epochs": POSITIVE_INT,
    "max_seq_len": POSITIVE_INT, "pad_to_multiple_of": POSITIVE_INT,
    "save_steps": NON_NEGATIVE_INT, "save_total_limit": NON_NEGATIVE_INT, "num_warmup_steps": NON_NEGATIVE_INT,
    "eval_interval": NON_NEGATIVE_INT, "eval_iters": NON_NEGATIVE_INT, "loss_plateau_warning": NON_NEGATIVE_INT,
    "lora_dim": NON_NEGATIVE_INT, "learning_rate": NON_NEGATIVE, "lora_learning_rate": NON_NEGATIVE,
    "weight_decay": NON_NEGATIVE, "center_rewards_coefficient": NON_NEGATIVE, "dropout": PROBABILITY,
    "num_heads": POSITIVE_INT, "conservative_lambda": NON_NEGATIVE,
}

# DeepSpeed's documented top-level keys (https://www.deepspeed.ai/docs/config-json/); the runtime's own
# constants are added at check time, so a key DeepSpeed knows is never refused.
DEEPSPEED_TOP_LEVEL_KEYS = {
    "train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "optimizer",
    "scheduler", "communication_data_type", "prescale_gradients", "gradient_predivide_factor",
    "sparse_gradients", "fp16", "bf16", "bfloat16", "amp", "gradient_clipping", "zero_optimization",
    "zero_allow_untested_optimizer", "zero_force_ds_cpu_optimizer", "aio", "activation_checkpointing",
    "sparse_attention", "flops_profiler", "tensorboard", "wandb", "csv_monitor", "comet", "comms_logger",
    "autotuning", "elasticity", "data_efficiency", "curriculum_learning", "compression_training", "checkpoint",
    "data_types", "steps_per_print", "wall_clock_breakdown", "dump_state", "memory_breakdown", "timers",
    "pipeline", "hybrid_engine", "compile", "weight_quantization", "eigenvalue", "progressive_layer_drop",
    "quantize_training", "disable_allgather", "dataloader_drop_last", "torch_autocast", "nebula",
    "seq_parallel_communication_data_type", "use_data_before_expert_parallelism", "zero_quantized_weights",
}
CONFIG_TYPES = {  # keys main.py reads -> (check, what it must be)
    "train_batch_size": POSITIVE_INT, "train_micro_batch_size_per_gpu": POSITIVE_INT,
    "gradient_accumulation_steps": POSITIVE_INT, "gradient_clipping": NON_NEGATIVE,
    "steps_per_print": POSITIVE_INT, "prescale_gradients": "true or false", "wall_clock_breakdown": "true or false",
}
SECTION_EXAMPLES = {"zero_optimization": '{"stage": 2}', "fp16": '{"enabled": true}', "bf16": '{"enabled": true}',
                    "bfloat16": '{"enabled": true}'}


def _fits(value, rule):
    if rule == "true or false":
        return isinstance(value, bool)
    if rule in (POSITIVE_INT, NON_NEGATIVE_INT):
        return isinstance(value, int) and not isinstance(value, bool) and value >= (rule == POSITIVE_INT)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return False
    return value > 0 if rule == POSITIVE else value >= 0 if rule == NON_NEGATIVE else 0 <= value < 1


def flag_problems(args):
    """Problems with the flags' values and with --output_dir, as lines."""
    problems = [f"--{flag} must be {rule}, not {getattr(args, flag)!r}." for flag, rule in FLAG_RULES.items()
                if getattr(args, flag, None) is not None and not _fits(getattr(args, flag), rule)]
    if args.only_optimize_lora and not args.lora_dim:
        problems.append("--only_optimize_lora needs --lora_dim > 0.")
    problems += _head_problems(args)
    problems += _output_dir_problems(args.output_dir) + _chat_template_problems(args.chat_template)
    problems += eval_set_problems(getattr(args, "eval_data_path", None), args.data_path)
    problems += _weight_problems(getattr(args, "data_weights", None), args.data_path)
    return problems + _objective_problems(args)


EVAL_SET_NAME = re.compile(r"[A-Za-z0-9_.-]+")  # it names log fields and TensorBoard tags


def eval_set_problems(values, data_paths, trained_by="a --data_path"):
    """--eval_data_path NAME=PATH ...: well formed, distinct names, readable paths not among `data_paths`,
    the training data (`trained_by` says whose)."""
    from data.sources import names_a_source
    problems, names = [], set()
    trained = {os.path.realpath(p) for p in data_paths if os.path.exists(p)} | set(data_paths)
    for value in values or []:
        name, _, path = value.partition("=")
        if not EVAL_SET_NAME.fullmatch(name) or not path:
            problems.append(f"--eval_data_path {value!r} must be NAME=PATH, NAME made of letters, digits, '_', '.' "
                            "or '-' (e.g. hh_test=data/hh_test.jsonl).")
        elif name in names:
            problems.append(f"--eval_data_path names {name!r} twice: give each held-out set its own name.")
        elif not os.path.exists(path) and not names_a_source(path):
            problems.append(f"--eval_data_path {value!r}: {path!r} is no file or folder (nor a hub or synthetic "
                            "source name).")
        elif os.path.exists(path) and not os.access(path, os.R_OK | (os.X_OK if os.path.isdir(path) else 0)):
            problems.append(f"--eval_data_path {value!r}: {path!r} cannot be read (permissions).")
        elif path in trained or os.path.realpath(path) in trained:
            problems.append(f"--eval_data_path {value!r}: {path!r} is also {trained_by}, so its pairs are trained "
                            "on, not held out: give a set the training does not read.")
        names.add(name)
    return problems


def _weight_problems(values, data_paths):
    if not values:
        return []
    from data.mix import parse_weights
    try:
        parse_weights(values, data_paths)
    except UserError as error:
        return [str(error)]
    return []


def _objective_problems(args):
    """--objective regression needs --attributes (and --attribute_weights, if given, one per attribute); the
    flags of the pairwise loss and of chat data do not apply to it; the attribute flags need it."""
    if args.objective != "regression":
        rated = [path for path in args.data_path if path.split(":")[0] == "synthetic/rated"]
        return [f"{flag} needs --objective regression." for flag, value in
                (("--attributes", args.attributes), ("--attribute_weights", args.attribute_weights)) if value] + [
            f"--data_path {path} holds rated single responses, not pairs: train on it with --objective regression "
            "--attributes helpfulness,correctness,coherence,complexity,verbosity." for path in rated]
    problems = []
    if not args.attributes:
        problems.append("--objective regression needs --attributes, the rating columns to learn, e.g. "
                        "--attributes helpfulness,correctness,coherence,complexity,verbosity (HelpSteer2's).")
    elif len(set(args.attributes)) < len(args.attributes):
        problems.append(f"--attributes {','.join(args.attributes)} names a column twice; give each once.")
    if args.attributes and args.attribute_weights and len(args.attribute_weights) != len(args.attributes):
        problems.append(f"--attribute_weights gives {len(args.attribute_weights)} weight(s) for "
                        f"{len(args.attributes)} --attributes ({','.join(args.attributes)}); give one per attribute.")
    pairwise_only = (("--use_margin", args.use_margin),
                     ("--center_rewards_coefficient", args.center_rewards_coefficient),
                     ("--drop_identical_pairs", args.drop_identical_pairs), ("--chat_template", args.chat_template),
                     ("--num_heads", args.num_heads != 1), ("--eval_data_path", getattr(args, "eval_data_path", None)),
                     ("--data_weights", getattr(args, "data_weights", None)))
    problems += [f"{flag} does not apply to --objective regression (rated single responses, no pairs or chat "
                 "template); leave it out." for flag, value in pairwise_only if value]
    return problems


def _head_problems(args):
    """The ensemble flags that need one: --head_bootstrap and --conservative_lambda act on K >= 2 heads."""
    if args.num_heads >= 2:
        return []
    needs = [flag for flag, on in (("--head_bootstrap", args.head_bootstrap),
                                   ("--conservative_lambda", args.conservative_lambda)) if on]
    return [f"{flag} needs an ensemble: add --num_heads 2 or more (now {args.num_heads})." for flag in needs]


def _chat_template_problems(path):
    if path is None:
        return []
    try:
        with open(path) as f:
            template = f.read()
    except OSError as error:
        return [f"--chat_template {path!r}: cannot read it ({error.strerror or error})."]
    if not template.strip():
        return [f"--chat_template {path!r} is empty: give a file holding a Jinja chat template over `messages`, or "
                "leave the flag out to use the tokenizer's own."]
    return []


def _output_dir_problems(output_dir):
    problem = output_folder_problem(output_dir)
    return [f"--output_dir {output_dir}: {problem}."] if problem else []


def config_problems(config):
    """Problems with the keys and value types of a DeepSpeed config (a dict), as lines."""
    known = DEEPSPEED_TOP_LEVEL_KEYS | _deepspeed_constants()
    problems = []
    for key, value in config.items():
        if key not in known:
            problems.append(f"DeepSpeed config key {key!r} is not one DeepSpeed reads{_did_you_mean(key, known)}")
        elif key in CONFIG_TYPES and not _fits(value, CONFIG_TYPES[key]):
            problems.append(f"DeepSpeed config key {key} must be {CONFIG_TYPES[key]}, not {value!r}.")
        elif key in SECTION_EXAMPLES and not isinstance(value, dict):
            problems.append(f"DeepSpeed config key {key} must be an object such as {SECTION_EXAMPLES[key]}, "
                            f"not {value!r}.")
        elif key in SECTION_EXAMPLES:
            problems += _section_problems(key, value)
    return problems


def _section_problems(key, section):
    """Check a section with DeepSpeed's own pydantic model: unknown fields and wrong types."""
    from pydantic import ValidationError
    model = _section_model(key)
    try:
        model(**section)
    except ValidationError as error:
        fields = set(model.model_fields) | {f.alias for f in model.model_fields.values() if f.alias}
        lines = []
        for item in error.errors():
            name = ".".join(str(part) for part in item["loc"])
            hint = _did_you_mean(str(item["loc"][0]), fields) if item["type"] == "extra_forbidden" else ""
            lines.append(f"DeepSpeed config key {key}.{name}: {item['msg']} (got {item.get('input')!r}){hint or '.'}")
        return lines
    return []


def _section_model(key):
    if key == "zero_optimization":
        from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
        return DeepSpeedZeroConfig
    from deepspeed.runtime.precision_config import DeepSpeedBF16Config, DeepSpeedFP16Config
    return DeepSpeedFP16Config if key == "fp16" else DeepSpeedBF16Config


def _deepspeed_constants():
    import deepspeed.runtime.constants as constants
    return {value for name, value in vars(constants).items() if name.isupper() and isinstance(value, str)}


def _did_you_mean(word, candidates):
    close = difflib.get_close_matches(word, sorted(candidates), n=1, cutoff=0.75)
    return f": did you mean {close[0]!r}?" if close else ": remove it, or check DeepSpeed's config documentation."


def check(args, config):
    """Raise one UserError listing every problem with the flags and the DeepSpeed config."""
    problems = flag_problems(args) + config_problems(config)
    if problems:
        raise UserError(" ".join(problems) if len(problems) == 1 else
                        f"{len(problems)} problems: " + " ".join(f"({i}) {p}" for i, p in enumerate(problems, 1)))
