"""Build the tokenizer and the reward model from a pretrained checkpoint folder (or hub name)."""
import math
import os

from model.reward_model import DEEPSPEED_CHAT, END_OF_CONVERSATION, LAST_TOKEN, RewardModel
from utils.dist import print_rank0
from utils.errors import UserError
from utils.hub import hub_unreachable_reason

# Config keys that hold dropout probabilities in the supported architectures.
NEW_PAD_TOKEN = "<|pad|>"  # added when a tokenizer has no PAD token of its own besides EOS/BOS
DROPOUT_KEYS = ("dropout", "attention_dropout", "activation_dropout", "hidden_dropout",
                "resid_pdrop", "embd_pdrop", "attn_pdrop", "hidden_dropout_prob",
                "attention_probs_dropout_prob")


def _offline_hint(name, error):
    return UserError(
        f"could not load '{name}' ({type(error).__name__}: {str(error).splitlines()[0][:200]}). "
        "It is not a local folder and the Hugging Face hub is unreachable from here: pass "
        "--model_name_or_path LOCAL_FOLDER (a folder with config.json, weights and tokenizer files).")


def check_model_folder(name):
    """Fail early, before any loading, if a local folder lacks a config or tokenizer (or, for a hub
    name, if the hub cannot be reached)."""
    if not os.path.isdir(name):
        error = hub_unreachable_reason()
        if error is not None:
            raise _offline_hint(name, error)
        return
    files = set(os.listdir(name))
    if "config.json" not in files:
        raise UserError(f"--model_name_or_path {name} has no config.json: point it at a Hugging Face "
                        "model folder (config.json, weights, tokenizer files).")
    if not files & {"tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model"}:
        raise UserError(f"--model_name_or_path {name} has no tokenizer files (tokenizer.json or "
                        "tokenizer_config.json): save the tokenizer into the folder too.")


def load_tokenizer(name, end_of_conversation_token, add_eot_token=False):
    """DeepSpeed-Chat's convention: right padding, pad = eos (see RewardModel.end_indices)."""
    from transformers import AutoTokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as error:
        raise _offline_hint(name, error) from error
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    if add_eot_token:
        tokenizer.add_special_tokens({"additional_special_tokens": [end_of_conversation_token]})
    return tokenizer


def pads_at_beginning(tokenizer):
    """How many PAD-equal tokens the tokenizer puts before every text: 1 for OPT (its BOS `</s>` is also
    its EOS, and DeepSpeed-Chat sets PAD = EOS), 0 for tokenizers without a BOS or with another one."""
    ids = tokenizer("a")["input_ids"]
    return next((i for i, token in enumerate(ids) if token != tokenizer.pad_token_id), len(ids))


def resolve_num_padding(value, tokenizer):
    """--num_padding_at_beginning: 'auto' -> `pads_at_beginning`; a typed number that contradicts the
    tokenizer is kept, with a warning naming the fix."""
    derived = pads_at_beginning(tokenizer)
    why = (f"it puts {derived} PAD-equal token(s) before every text (PAD {tokenizer.pad_token!r}, "
           f"BOS {tokenizer.bos_token!r})")
    if value == "auto":
        print_rank0(f"model: --num_padding_at_beginning auto -> {derived}: {why}")
        return derived
    if value != derived:
        print_rank0(f"warning: --num_padding_at_beginning {value} contradicts the tokenizer: {why}. Use "
                    f"--num_padding_at_beginning {derived}, or leave it at auto.")
    return value


def use_distinct_pad(tokenizer):
    """Give the tokenizer a PAD token that is neither EOS nor BOS, for the `last_token` rule (and exported
    classifiers, which pool at the last non-PAD token): its own configured one, else a new special token
    (the model's embeddings are resized to hold it). Returns a line for the log."""
    own = tokenizer.init_kwargs.get("pad_token")
    own = getattr(own, "content", own)  # an AddedToken or a string
    taken = {tokenizer.eos_token, tokenizer.bos_token}
    if isinstance(own, str) and own not in taken and tokenizer.convert_tokens_to_ids(own) is not None:
        tokenizer.pad_token = own
        return f"PAD is the tokenizer's own {own!r} (id {tokenizer.pad_token_id}), not EOS {tokenizer.eos_token!r}"
    tokenizer.add_special_tokens({"pad_token": NEW_PAD_TOKEN})
    return (f"the tokenizer has no PAD token besides EOS {tokenizer.eos_token!r}: added {NEW_PAD_TOKEN!r} "
            f"(id {tokenizer.pad_token_id})")


def create_reward_model(name, tokenizer, num_padding_at_beginning, dropout=None,
                        compute_fp32_loss=False, end_of_conversation_token=END_OF_CONVERSATION,
                        center_rewards_coefficient=0.0, end_token_rule=DEEPSPEED_CHAT):
    from transformers import AutoConfig, AutoModel
    try:
        config = AutoConfig.from_pretrained(name)
        if dropout is not None:
            for key in DROPOUT_KEYS:
                if hasattr(config, key):
                    setattr(config, key, dropout)
        base = AutoModel.from_pretrained(name, config=config)
    except (OSError, ValueError) as error:
        raise _offline_hint(name, error) from error
    base.config.end_token_id = tokenizer.eos_token_id
    # DeepSpeed-Chat: PAD = EOS; the last_token rule has a PAD of its own (see use_distinct_pad)
    base.config.pad_token_id = tokenizer.pad_token_id if end_token_rule == LAST_TOKEN else base.config.eos_token_id
    base.resize_token_embeddings(int(8 * math.ceil(len(tokenizer) / 8.0)))
    return RewardModel(base, tokenizer, num_padding_at_beginning, compute_fp32_loss,
                       end_of_conversation_token, center_rewards_coefficient, end_token_rule)


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

