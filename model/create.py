"""Build the tokenizer and the reward model: one recipe for every entry point (`build_reward_model`)."""
import math
import os

import torch

from model.io import HEAD_KEY
from model.lora import apply_lora, is_lora_param, merge_lora
from model.reward_model import RewardModel
from utils.errors import UserError
from utils.hub import hub_unreachable_reason
from utils.spans import END_OF_CONVERSATION, LAST_TOKEN, pads_at_beginning

# Config keys that hold dropout probabilities in the supported architectures.
NEW_PAD_TOKEN = "<|pad|>"  # added when a tokenizer has no PAD token of its own besides EOS/BOS
DROPOUT_KEYS = ("dropout", "attention_dropout", "activation_dropout", "hidden_dropout",
                "resid_pdrop", "embd_pdrop", "attn_pdrop", "hidden_dropout_prob",
                "attention_probs_dropout_prob")


def _offline_hint(name, error):
    """The UserError for a model or tokenizer that `name` (a folder or hub name) could not give."""
    reason = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    if os.path.isdir(name):
        return UserError(f"could not load '{name}' ({reason}): the folder's config.json or tokenizer files are "
                         "missing or damaged; save the model and its tokenizer there again.")
    return UserError(f"could not load '{name}' ({reason}). It is not a local folder and the Hugging Face hub is "
                     "unreachable from here: use a local folder holding the model (config.json, weights and "
                     "tokenizer files) instead.")


def check_model_folder(name):
    """main.py's --model_name_or_path: fail early, before any loading, if a local folder lacks a config or
    tokenizer (or, for a hub name, if the hub cannot be reached)."""
    if not os.path.isdir(name):
        error = hub_unreachable_reason()
        if error is not None:
            raise UserError(f"--model_name_or_path: {_offline_hint(name, error)}")
        return
    files = set(os.listdir(name))
    if "config.json" not in files:
        raise UserError(f"--model_name_or_path {name} has no config.json: point it at a Hugging Face model folder "
                        "(config.json, weights, tokenizer files).")
    if not files & {"tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model"}:
        raise UserError(f"--model_name_or_path {name} has no tokenizer files (tokenizer.json or "
                        "tokenizer_config.json): save the tokenizer into the folder too.")


def load_tokenizer(source, add_eot_token=False, chat_template=None, pad_token=None):
    """The tokenizer in `source` with DeepSpeed-Chat's conventions: right padding, PAD = EOS (`pad_token`
    None; see utils/spans.py), or PAD = `pad_token` (added as a special token if new); `add_eot_token` makes
    the end-of-conversation text one special token; `chat_template` (text) replaces the tokenizer's own."""
    from transformers import AutoTokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise _offline_hint(source, error) from error
    tokenizer.padding_side = "right"
    if add_eot_token:
        tokenizer.add_special_tokens({"additional_special_tokens": [END_OF_CONVERSATION]})
    if pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    elif tokenizer.convert_tokens_to_ids(pad_token) in (None, tokenizer.unk_token_id):
        tokenizer.add_special_tokens({"pad_token": pad_token})
    else:
        tokenizer.pad_token = pad_token
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def build_tokenizer(settings, source=None):
    """The tokenizer `settings` describe, from `source` (a saved model folder) or the base model's."""
    tokenizer = load_tokenizer(source or settings.model_name_or_path, settings.add_eot_token,
                               settings.chat_template, settings.pad_token)
    if settings.pad_token_id is not None and tokenizer.pad_token_id != settings.pad_token_id:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(settings.pad_token_id)  # saved with its id only
    return tokenizer


def resolve_num_padding(value, tokenizer):
    """--num_padding_at_beginning: 'auto' -> `pads_at_beginning`, and a line for the log; a typed number that
    contradicts the tokenizer is kept, with a warning naming the fix."""
    derived = pads_at_beginning(tokenizer)
    why = (f"it puts {derived} PAD-equal token(s) before every text (PAD {tokenizer.pad_token!r}, "
           f"BOS {tokenizer.bos_token!r})")
    if value == "auto":
        return derived, f"model: --num_padding_at_beginning auto -> {derived}: {why}"
    if value != derived:
        return value, (f"warning: --num_padding_at_beginning {value} contradicts the tokenizer: {why}. Use "
                       f"--num_padding_at_beginning {derived}, or leave it at auto.")
    return value, None


def distinct_pad_token(tokenizer):
    """(token, line for the log): a PAD token that is neither EOS nor BOS, for the `last_token` rule (and
    exported classifiers, which pool at the last non-PAD token): the tokenizer's own configured one, else
    NEW_PAD_TOKEN (`load_tokenizer` adds it; the model's embeddings are resized to hold it)."""
    own = tokenizer.init_kwargs.get("pad_token")
    own = getattr(own, "content", own)  # an AddedToken or a string
    if isinstance(own, str) and own not in (tokenizer.eos_token, tokenizer.bos_token) \
            and tokenizer.convert_tokens_to_ids(own) is not None:
        return own, f"PAD is the tokenizer's own {own!r}, not EOS {tokenizer.eos_token!r}"
    return NEW_PAD_TOKEN, (f"the tokenizer has no PAD token besides EOS {tokenizer.eos_token!r}: added "
                           f"{NEW_PAD_TOKEN!r}")


def build_reward_model(settings, tokenizer, weights="pretrained", config_source=None, dtype=None):
    """The one recipe for a RewardModel, used by training, resume, export, evaluation, scoring, serving and
    the benchmarks.

    The base model's config comes from `config_source` (a saved reward model's folder) or the base model
    named in `settings`, with the settings' dropout; its PAD is the settings' (EOS under DeepSpeed-Chat's
    rule), its embeddings are resized to len(tokenizer) rounded up to 8 (DeepSpeed-Chat's). `weights`:
    "pretrained" loads the base model's weights and adds a new value head (and LoRA adapters with
    settings.lora_dim), as training starts; "random" initialises everything from torch's RNG (benchmarks);
    a state dict (a saved model's, or a checkpoint's, LoRA adapters included) gives exactly those weights,
    in `dtype` (default: the value head's dtype in the state; buffers stay as transformers makes them, as
    in `AutoModelForSequenceClassification`), LoRA merged.
    """
    from transformers import AutoConfig, AutoModel
    source = config_source or settings.model_name_or_path
    state = weights if isinstance(weights, dict) else None
    try:
        config = AutoConfig.from_pretrained(source)
        if settings.dropout is not None:
            for key in DROPOUT_KEYS:
                if hasattr(config, key):
                    setattr(config, key, settings.dropout)
        if weights == "pretrained":
            base = AutoModel.from_pretrained(settings.model_name_or_path, config=config)
        else:
            dtype = dtype or (state[HEAD_KEY].dtype if state and HEAD_KEY in state else torch.float32)
            base = AutoModel.from_config(config, dtype=dtype)
    except (OSError, ValueError) as error:
        raise _offline_hint(source, error) from error
    base.config.end_token_id = tokenizer.eos_token_id
    base.config.pad_token_id = settings.pad_token_id if settings.end_token_rule == LAST_TOKEN \
        else base.config.eos_token_id
    base.resize_token_embeddings(int(8 * math.ceil(len(tokenizer) / 8.0)))
    model = RewardModel(base, settings)
    adapters = state is None or any(is_lora_param(key) for key in state)
    if settings.lora_dim and adapters:
        apply_lora(model, settings.lora_dim, settings.lora_module_name, settings.only_optimize_lora)
    if state is not None:
        model.v_head.to(dtype)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise UserError(f"the weights do not match the model of {source} (missing {missing[:3]}, unexpected "
                            f"{unexpected[:3]}): a reward model needs its base model's weights and its trained "
                            "value head (v_head.weight); was the base model folder changed?")
        if settings.lora_dim and adapters:
            merge_lora(model)
    elif weights == "random":
        model.to(dtype)
    return model


def load_reward_model(model_dir, dtype=None, center_rewards=False):
    """(RewardModel in eval mode) from a folder main.py saved (or export_hf.py wrote from a checkpoint).

    `dtype` defaults to the dtype the weights were saved in (the training precision), so scores match the
    ones main.py reported on the same device. `center_rewards` subtracts the eval-set reward mean saved at
    the end of training from every value (step 3's usual normalisation); the loss is unchanged by it.
    """
    from model.io import read_reward_model_dir
    settings, state, stats = read_reward_model_dir(model_dir)
    tokenizer = build_tokenizer(settings, source=model_dir)
    model = build_reward_model(settings, tokenizer, state, config_source=model_dir, dtype=dtype)
    model.reward_stats = stats
    if center_rewards:
        if "reward_mean" not in stats:
            raise UserError(f"{model_dir}/config.json has no reward_mean to centre with: re-train or "
                            "evaluate with this project's main.py.")
        model.reward_offset = stats["reward_mean"]
    return model.eval()


def model_max_positions(name):
    """The longest sequence the model's position embeddings allow, or None if it has no limit."""
    from transformers import AutoConfig
    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as error:
        raise _offline_hint(name, error) from error
    for key in ("max_position_embeddings", "n_positions"):
        if getattr(config, key, None):
            return getattr(config, key)
    return None

