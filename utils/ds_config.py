"""Resolve the DeepSpeed config: the hand-written file is the base, typed flags override keys.

Every change made here is returned as a note so main.py can log what it changed and why.
"""
import copy
import json

from utils.errors import UserError

DTYPES = ("fp16", "bf16", "fp32")


def load_ds_config(path):
    try:
        with open(path) as f:
            text = f.read()
    except OSError as error:
        raise UserError(f"cannot read --deepspeed_config {path}: {error.strerror}.") from error
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"--deepspeed_config {path} is not valid JSON: {error.msg} at line "
                        f"{error.lineno}, column {error.colno}.") from error
    if not isinstance(config, dict):
        raise UserError(f"--deepspeed_config {path} must hold a JSON object, not {type(config).__name__}.")
    for section in ("optimizer", "scheduler"):
        if section in config:
            raise UserError(f"--deepspeed_config {path} has an '{section}' section: main.py builds the "
                            f"{section} from its flags (--learning_rate, --lr_scheduler_type, ...); "
                            "remove that section.")
    return config


def config_dtype(config):
    """The mixed-precision dtype a config asks for: 'fp16', 'bf16' or 'fp32'."""
    fp16 = config.get("fp16", {}).get("enabled", False)
    bf16 = config.get("bf16", config.get("bfloat16", {})).get("enabled", False)
    for key, value in (("fp16.enabled", fp16), ("bf16.enabled", bf16)):
        if value not in (True, False):
            raise UserError(f"DeepSpeed config key {key} must be true or false, not {value!r}.")
    if fp16 and bf16:
        raise UserError("the DeepSpeed config enables both fp16 and bf16: enable one (or pass --dtype).")
    return "fp16" if fp16 else "bf16" if bf16 else "fp32"


def _set_dtype(config, dtype):
    config.pop("bfloat16", None)
    config.setdefault("fp16", {})["enabled"] = dtype == "fp16"
    config.setdefault("bf16", {})["enabled"] = dtype == "bf16"


def resolve_ds_config(base, args, typed, world_size, device_type, bf16_supported):
    """Return (config, notes). `typed` is the set of flag names the user typed on the command line."""
    config = copy.deepcopy(base)
    notes = []
    zero = config.setdefault("zero_optimization", {})
    if "zero_stage" in typed:
        zero["stage"] = args.zero_stage
    stage = zero.setdefault("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise UserError(f"ZeRO stage must be 0, 1, 2 or 3, not {stage!r} (--zero_stage or "
                        "zero_optimization.stage).")
    if "offload" in typed and args.offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": device_type == "cuda"}
        if stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": device_type == "cuda"}
    _resolve_batch(config, args, typed, world_size, notes)
    _resolve_dtype(config, args, typed, device_type, bf16_supported, notes)
    if stage >= 2 and config.get("prescale_gradients") and zero.get("reduce_scatter", True):
        config["prescale_gradients"] = False
        notes.append(f"prescale_gradients: true -> false: DeepSpeed refuses it with ZeRO-{stage} "
                     "reduce-scatter; gradients are still averaged over ranks (after the reduction).")
    return config, notes


def _resolve_batch(config, args, typed, world_size, notes):
    if "per_device_train_batch_size" in typed:
        config["train_micro_batch_size_per_gpu"] = args.per_device_train_batch_size
    micro = config.get("train_micro_batch_size_per_gpu")
    if not isinstance(micro, int) or micro < 1:
        raise UserError(f"micro batch must be a positive integer, not {micro!r} "
                        "(--per_device_train_batch_size or train_micro_batch_size_per_gpu).")
    if "gradient_accumulation_steps" in typed:
        accumulation = args.gradient_accumulation_steps
        if accumulation < 1:
            raise UserError(f"--gradient_accumulation_steps must be >= 1, not {accumulation}.")
        new_global = micro * world_size * accumulation
        if config.get("train_batch_size") not in (None, new_global):
            notes.append(f"train_batch_size {config['train_batch_size']} -> {new_global} "
                         f"(--gradient_accumulation_steps {accumulation} x micro batch {micro} x "
                         f"{world_size} ranks)")
        config["train_batch_size"] = new_global
    global_batch = config.get("train_batch_size")
    if global_batch is None:
        global_batch = micro * world_size * config.get("gradient_accumulation_steps", 1)
        config["train_batch_size"] = global_batch
    if global_batch % (micro * world_size):
        raise UserError(
            f"the global batch train_batch_size={global_batch} is not divisible by micro batch {micro} x "
            f"{world_size} ranks = {micro * world_size}: pick a --per_device_train_batch_size (or number "
            "of ranks) whose product divides it, or set --gradient_accumulation_steps.")
    config["gradient_accumulation_steps"] = global_batch // (micro * world_size)


def _resolve_dtype(config, args, typed, device_type, bf16_supported, notes):
    dtype = args.dtype if "dtype" in typed else config_dtype(config)
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}.")
    if device_type == "cpu" and dtype == "fp16":
        dtype = "bf16" if bf16_supported else "fp32"
        notes.append(f"fp16 -> {dtype}: DeepSpeed's CPU accelerator has no fp16.")
    if device_type == "cpu" and dtype == "bf16" and not bf16_supported:
        dtype = "fp32"
        notes.append("bf16 -> fp32: this CPU has no bf16 support.")
    _set_dtype(config, dtype)
