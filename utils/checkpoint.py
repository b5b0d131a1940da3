"""Save the trained reward model in Hugging Face format (rank 0 writes; ZeRO-3 gathers first)."""
import json
import os
import shutil

import torch

from model.reward_model import REWARD_CONFIG_KEY, WEIGHTS_NAME
from utils.dist import barrier, is_main_process


def check_output_dir(output_dir, overwrite):
    """Refuse to train into a folder that already holds a finished model, unless told to."""
    from utils.errors import UserError
    if not overwrite and os.path.exists(os.path.join(output_dir, WEIGHTS_NAME)):
        raise UserError(f"--output_dir {output_dir} already holds a trained model ({WEIGHTS_NAME}): pick "
                        "another folder or pass --overwrite_output_dir to replace it.")


def gathered_state_dict(model, zero_stage):
    """Full CPU state dict on rank 0 (an empty dict elsewhere); under ZeRO-3 every rank must call it."""
    keys = list(model.state_dict().keys())
    params = dict(model.named_parameters())
    state = {}
    for key in keys:
        tensor = params.get(key)
        if tensor is not None and zero_stage == 3:
            import deepspeed
            with deepspeed.zero.GatheredParameters([tensor]):
                if is_main_process():
                    state[key] = tensor.data.detach().cpu().clone()
        elif is_main_process():
            state[key] = (tensor if tensor is not None else model.state_dict()[key]).detach().cpu().clone()
    return state


def save_hf_model(model, tokenizer, output_dir, zero_stage, extra_json=None):
    """Write config.json (+ reward settings), model.safetensors, tokenizer files and `extra_json`.

    Files are written to a temporary folder, then moved in with the weights last, so output_dir
    never holds weights next to a half-written config. Non-finite weights are never saved.
    """
    from safetensors.torch import save_file

    from utils.dist import all_reduce_sum
    from utils.errors import UserError
    state = gathered_state_dict(model, zero_stage)
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if all_reduce_sum(torch.tensor([float(len(bad))])).item():
        raise UserError(f"the trained weights hold NaN/inf ({', '.join(bad[:3]) or 'on rank 0'}): the model "
                        "was not saved. Resume from a checkpoint with a lower --learning_rate.")
    if is_main_process():
        staging = os.path.join(output_dir, ".saving")
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
        setattr(model.config, REWARD_CONFIG_KEY, model.reward_settings())
        model.config.save_pretrained(staging)
        save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(staging, WEIGHTS_NAME),
                  metadata={"format": "pt"})
        tokenizer.save_pretrained(staging)
        for name, content in (extra_json or {}).items():
            write_json(os.path.join(staging, name), content)
        _publish(staging, output_dir)
    barrier()


def _publish(staging, output_dir):
    weights = os.path.join(output_dir, WEIGHTS_NAME)
    if os.path.exists(weights):
        os.remove(weights)  # from here until the end, output_dir holds no model
    for name in sorted(os.listdir(staging), key=lambda n: n == WEIGHTS_NAME):
        os.replace(os.path.join(staging, name), os.path.join(output_dir, name))
    os.rmdir(staging)


def write_json(path, content):
    with open(path, "w") as f:
        json.dump(content, f, indent=2, default=_jsonable)
        f.write("\n")


def _jsonable(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return str(value)


# ---- Export for other tools (evaluation_scripts/export_hf.py) ---------------------------------------

DSCHAT_WEIGHTS_NAME = "pytorch_model.bin"
# DeepSpeed-Chat's attribute holding the base model: `rwtransformer` in the current `dschat/` package,
# `rwtranrsformer` (sic) in the older `training/utils/` layout. The current step-3 loader is not strict,
# so a checkpoint with the other prefix loads nothing and leaves the critic random, without an error.
DSCHAT_TRANSFORMER_KEYS = ("rwtransformer", "rwtranrsformer")
OUR_TRANSFORMER_KEY = "rwtransformer"
HEAD_KEY = "v_head.weight"


def read_reward_model_dir(model_dir):
    """(reward settings dict, state dict) of a folder written by `save_hf_model`; UserError if it is not one."""
    from safetensors.torch import load_file

    from utils.errors import UserError
    if not os.path.isdir(model_dir):
        raise UserError(f"{model_dir} is not a folder: pass the output_dir of a main.py run.")
    config_path = os.path.join(model_dir, "config.json")
    weights_path = os.path.join(model_dir, WEIGHTS_NAME)
    settings = None
    if os.path.exists(config_path):
        with open(config_path) as f:
            settings = json.load(f).get(REWARD_CONFIG_KEY)
    problem = ("no config.json" if not os.path.exists(config_path) else
               f"no '{REWARD_CONFIG_KEY}' entry in config.json" if settings is None else
               f"no {WEIGHTS_NAME}" if not os.path.exists(weights_path) else None)
    if problem:
        raise UserError(f"{model_dir} is not a reward model saved by this project ({problem}): pass the "
                        "output_dir of a main.py run.")
    state = load_file(weights_path)
    unknown = sorted(k for k in state if k != HEAD_KEY and not k.startswith(OUR_TRANSFORMER_KEY + "."))
    if unknown or HEAD_KEY not in state:
        raise UserError(f"{weights_path}: expected only '{OUR_TRANSFORMER_KEY}.*' and '{HEAD_KEY}' tensors; "
                        f"found {unknown[:5] or 'no ' + HEAD_KEY}. Re-save the model with main.py.")
    return settings, state


def write_deepspeed_chat_weights(model_dir, output_dir=None, transformer_key=OUR_TRANSFORMER_KEY):
    """Write `pytorch_model.bin` as DeepSpeed-Chat's step 3 loads it; returns its path.

    Step 3 (`create_critic_model(..., rlhf_training=True)`) builds `AutoModel.from_config(config.json)`,
    wraps it in its RewardModel (attributes `<transformer_key>` and a bias-free `v_head`) and loads this
    file, a `torch.save`d state dict, into it. Tensors keep their saved dtype. `output_dir` defaults to
    `model_dir`, whose config.json (the base model's, plus our reward settings) is what step 3 reads;
    another folder also gets that config.json and the tokenizer files.
    """
    import shutil

    from utils.errors import UserError
    if transformer_key not in DSCHAT_TRANSFORMER_KEYS:
        raise UserError(f"transformer key '{transformer_key}': DeepSpeed-Chat uses one of {DSCHAT_TRANSFORMER_KEYS}.")
    settings, state = read_reward_model_dir(model_dir)
    renamed = {(key if key == HEAD_KEY else transformer_key + key[len(OUR_TRANSFORMER_KEY):]): tensor.contiguous()
               for key, tensor in state.items()}
    output_dir = output_dir or model_dir
    os.makedirs(output_dir, exist_ok=True)
    if os.path.realpath(output_dir) != os.path.realpath(model_dir):
        shutil.copyfile(os.path.join(model_dir, "config.json"), os.path.join(output_dir, "config.json"))
        _reward_tokenizer(model_dir, settings).save_pretrained(output_dir)
    path = os.path.join(output_dir, DSCHAT_WEIGHTS_NAME)
    torch.save(renamed, path)
    return path


def _reward_tokenizer(model_dir, settings):
    """The saved tokenizer with DeepSpeed-Chat's conventions: pad = our pad id (eos), right padding."""
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(settings["pad_token_id"])
    tokenizer.padding_side = "right"
    return tokenizer


def check_end_token_rule(tokenizer, settings, sample="Human: Hi! Assistant: Hello."):
    """UserError unless Hugging Face's pooling (last token != pad) finds our end token (before the
    (n+1)-th pad, n = num_padding_at_beginning) on a typical padded row; returns that row's ids.

    They agree when a text holds exactly n pad-equal tokens before its end: OPT's `</s>` BOS with n=1,
    no BOS with n=0. A trailing pad-equal end-of-conversation token (GPT-2's `<|endoftext|>`) is fine:
    both rules then read the token before it.
    """
    from model.reward_model import end_indices
    from utils.errors import UserError
    pad_id, skip = settings["pad_token_id"], settings["num_padding_at_beginning"]
    row = tokenizer(sample + settings["end_of_conversation_token"])["input_ids"] + [pad_id] * 2
    ids = torch.tensor([row])
    ours = int(end_indices(ids, pad_id, skip)[0]) - 1
    theirs = max(i for i, token in enumerate(row) if token != pad_id)
    if ours != theirs:
        raise UserError(
            f"num_padding_at_beginning={skip} does not fit this tokenizer: in {row} (pad id {pad_id}) the "
            f"reward model reads position {ours} but a Hugging Face classifier would read {theirs}. The model "
            "was trained reading the wrong token (OPT needs 1, models without a pad-equal BOS need 0): "
            "retrain with the right --num_padding_at_beginning before exporting.")
    return row


def export_sequence_classification(model_dir, output_dir, dtype=None):
    """Write `model_dir`'s reward model as a Hugging Face `AutoModelForSequenceClassification` folder.

    The base weights move under the classifier's base-model prefix (`model.` for OPT, `transformer.`
    for GPT-2) and `v_head.weight` becomes the bias-free `score.weight`; config.json gains
    `num_labels=1`, `architectures` and `pad_token_id` = our pad (= eos), so Hugging Face pools at the
    last non-pad token, which is our end token (see `check_end_token_rule`). The reward settings stay
    in config.json. `dtype` defaults to the saved one: config.json records it, and transformers loads
    in that dtype by default, so scores equal those of `RewardModel.from_pretrained`. Returns the
    classifier class name.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from utils.errors import UserError
    settings, state = read_reward_model_dir(model_dir)
    if os.path.realpath(output_dir) == os.path.realpath(model_dir):
        raise UserError(f"output folder {output_dir} is the model folder: exporting there would overwrite "
                        f"its {WEIGHTS_NAME}; pick another folder.")
    tokenizer = _reward_tokenizer(model_dir, settings)
    check_end_token_rule(tokenizer, settings)

    config = AutoConfig.from_pretrained(model_dir)
    config.num_labels = 1
    config.pad_token_id = settings["pad_token_id"]
    try:
        model = AutoModelForSequenceClassification.from_config(config)
    except ValueError as error:
        raise UserError(f"transformers has no sequence-classification class for model type "
                        f"'{config.model_type}' ({error}); export is not possible for it.") from error
    model.config.architectures = [type(model).__name__]
    prefix = model.base_model_prefix
    renamed = {("score.weight" if key == HEAD_KEY else prefix + key[len(OUR_TRANSFORMER_KEY):]): tensor
               for key, tensor in state.items()}
    expected = {key: tensor.shape for key, tensor in model.state_dict().items()}
    got = {key: tensor.shape for key, tensor in renamed.items()}
    if expected != got:
        differ = sorted(set(expected) ^ set(got)) or sorted(k for k in got if got[k] != expected[k])
        raise UserError(f"{type(model).__name__} does not hold this reward model's weights one to one "
                        f"(first differences: {differ[:5]}): export is not supported for it.")
    model.load_state_dict(renamed, strict=True)
    os.makedirs(output_dir, exist_ok=True)
    model.to(dtype or state[HEAD_KEY].dtype).save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return type(model).__name__


# ---- resumable DeepSpeed checkpoints -------------------------------------------------------------

CHECKPOINT_DIR = "checkpoints"
COMPLETE_MARKER = "COMPLETE"  # written last, by rank 0, after every rank has finished writing


def _rng_state():
    import random

    import numpy as np
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state):
    import random

    import numpy as np
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def checkpoint_steps(output_dir):
    """{step: folder} of the complete checkpoints in output_dir, and the incomplete folders."""
    root = os.path.join(output_dir, CHECKPOINT_DIR)
    complete, incomplete = {}, []
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        folder = os.path.join(root, name)
        if not (name.startswith("step-") and name[5:].isdigit()):
            continue
        if os.path.exists(os.path.join(folder, COMPLETE_MARKER)):
            complete[int(name[5:])] = folder
        else:
            incomplete.append(folder)
    return complete, incomplete


def save_checkpoint(engine, output_dir, client_state, total_limit=0):
    """Every rank writes its shards and RNG state; the marker makes the folder count only when whole."""
    from utils.dist import get_rank
    root = os.path.join(output_dir, CHECKPOINT_DIR)
    tag = f"step-{engine.global_steps}"
    folder = os.path.join(root, tag)
    if is_main_process() and os.path.isdir(folder):
        shutil.rmtree(folder)  # a stale, incomplete attempt at the same step
    barrier()
    engine.save_checkpoint(root, tag=tag, client_state=client_state, save_latest=False)
    torch.save(_rng_state(), os.path.join(folder, f"rng_state_rank{get_rank()}.pt"))
    barrier()
    if is_main_process():
        write_json(os.path.join(folder, COMPLETE_MARKER), dict(client_state, step=engine.global_steps))
        if total_limit:
            _prune(output_dir, total_limit)
    barrier()
    return folder


def _prune(output_dir, total_limit):
    complete, _ = checkpoint_steps(output_dir)
    for step in sorted(complete)[:-total_limit]:
        shutil.rmtree(complete[step])


def find_checkpoint(output_dir, resume_from, warn=print):
    """The checkpoint folder to resume from: `auto` = newest complete one in output_dir (or None)."""
    from utils.errors import UserError
    if resume_from != "auto":
        if not os.path.exists(os.path.join(resume_from, COMPLETE_MARKER)):
            raise UserError(f"--resume_from_checkpoint {resume_from} is not a complete checkpoint (no "
                            f"{COMPLETE_MARKER} marker): pass another one, or 'auto'.")
        return resume_from
    complete, incomplete = checkpoint_steps(output_dir)
    for folder in incomplete:
        warn(f"warning: ignoring incomplete checkpoint {folder} (interrupted while saving)")
    return complete[max(complete)] if complete else None


def checkpoint_info(folder):
    """What the COMPLETE marker records: step, position, world size, LoRA settings (readable before loading)."""
    with open(os.path.join(folder, COMPLETE_MARKER)) as f:
        return json.load(f)


def load_checkpoint(engine, folder):
    """Restore model, optimizer, scheduler, loss scaler and this rank's RNG; returns the client state."""
    from utils.dist import get_rank
    from utils.errors import UserError
    load_path, client_state = engine.load_checkpoint(os.path.dirname(folder), tag=os.path.basename(folder),
                                                     load_optimizer_states=True, load_lr_scheduler_states=True)
    if load_path is None:
        raise UserError(f"DeepSpeed could not load the checkpoint in {folder}.")
    rng_file = os.path.join(folder, f"rng_state_rank{get_rank()}.pt")
    if not os.path.exists(rng_file):
        raise UserError(f"{folder} has no RNG state for rank {get_rank()}: resume with the same number of "
                        "ranks it was saved with.")
    _set_rng_state(torch.load(rng_file, weights_only=False))
    return client_state
