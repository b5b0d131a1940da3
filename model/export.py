"""Export a saved reward model for other tools: Hugging Face sequence classification, DeepSpeed-Chat step 3."""
import json
import os
import re
import shutil

import torch

from data.chat import PROBE, ChatRenderer
from model.create import build_tokenizer
from model.io import HEAD_KEY, OUR_TRANSFORMER_KEY, WEIGHTS_NAME, WRITE_ERRORS, read_reward_model_dir
from model.reward_model import single_head
from utils.spans import LAST_TOKEN, row_ends
from utils.errors import UserError
from utils.settings import REGRESSION
from utils.io import STAGING, is_disk_full, output_folder_problem, publish, staging_folder


DSCHAT_WEIGHTS_NAME = "pytorch_model.bin"
HEADS_NAME = "v_heads.safetensors"  # an ensemble's K value heads beside the one-head export (`heads_note`)
HEADS_KEY = "v_heads.weight"  # (K, width) in HEADS_NAME
# DeepSpeed-Chat's attribute holding the base model: `rwtransformer` in the current `dschat/` package,
# `rwtranrsformer` (sic) in the older `training/utils/` layout. The current step-3 loader is not strict,
# so a checkpoint with the other prefix loads nothing and leaves the critic random, without an error.
DSCHAT_TRANSFORMER_KEYS = ("rwtransformer", "rwtranrsformer")


MODEL_FILES = ("config.json", WEIGHTS_NAME, DSCHAT_WEIGHTS_NAME)
# The exported chat template: the model's own renders into `rendered_chat`; a BOS it writes is dropped and the special
# tokens the tokenizer adds around a text are written instead (the {{ '' }} keep Jinja's trim_blocks and
# lstrip_blocks from eating the template's first or last whitespace).
EXPORTED_TEMPLATE = ("{{ PREFIX }}{% set rendered_chat %}{{ '' }}TEMPLATE{{ '' }}{% endset %}"
                     "{{ rendered_chat[BOS_LENGTH:] if rendered_chat.startswith(BOS) else rendered_chat }}{{ SUFFIX }}")
CHECK_CONVERSATIONS = (PROBE, PROBE * 2)


def check_export_target(output_dir, model_dir, overwrite):
    """Refuse a folder that cannot be written, or that holds another model (unless told to replace it)."""
    problem = output_folder_problem(output_dir)
    if problem:
        raise UserError(f"output folder {output_dir}: {problem}.")
    if os.path.realpath(output_dir) == os.path.realpath(model_dir) or overwrite:
        return
    held = [name for name in MODEL_FILES if os.path.exists(os.path.join(output_dir, name))]
    if held:
        raise UserError(f"{output_dir} already holds a model ({', '.join(held)}): pick another folder, or pass "
                        "export_hf.py --overwrite to replace it.")


def write_deepspeed_chat_weights(model_dir, output_dir=None, transformer_key=OUR_TRANSFORMER_KEY):
    """Write `pytorch_model.bin` as DeepSpeed-Chat's step 3 loads it; returns its path.

    Step 3 (`create_critic_model(..., rlhf_training=True)`) builds `AutoModel.from_config(config.json)`,
    wraps it in its RewardModel (attributes `<transformer_key>` and a bias-free `v_head`) and loads this
    file, a `torch.save`d state dict, into it. Tensors keep their saved dtype. `output_dir` defaults to
    `model_dir`, whose config.json (the base model's, plus our reward settings) is what step 3 reads;
    another folder also gets that config.json and the tokenizer files.
    """
    if transformer_key not in DSCHAT_TRANSFORMER_KEYS:
        raise UserError(f"transformer key '{transformer_key}': DeepSpeed-Chat uses one of {DSCHAT_TRANSFORMER_KEYS}.")
    settings, state, _ = read_reward_model_dir(model_dir)
    if settings.end_token_rule == LAST_TOKEN:
        raise UserError(f"{model_dir} reads its score at the last attended token (end_token_rule last_token: a chat "
                        "template, or EOS inside the texts), but DeepSpeed-Chat's step 3 reads it before the first "
                        "PAD = EOS, which in these texts ends an earlier turn. Export it with export_hf.py --format hf "
                        "and use it where the classifier pools at the last non-PAD token (TRL, OpenRLHF).")
    state = dict(state, **{HEAD_KEY: single_head(state[HEAD_KEY], settings.head)})  # step 3 reads one head
    renamed = {(key if key == HEAD_KEY else transformer_key + key[len(OUR_TRANSFORMER_KEY):]): tensor.contiguous()
               for key, tensor in state.items()}
    output_dir = output_dir or model_dir

    def write(staging):
        if os.path.realpath(output_dir) != os.path.realpath(model_dir):
            shutil.copyfile(os.path.join(model_dir, "config.json"), os.path.join(staging, "config.json"))
            build_tokenizer(settings, source=model_dir).save_pretrained(staging)
        torch.save(renamed, os.path.join(staging, DSCHAT_WEIGHTS_NAME))
    write_folder(output_dir, write)
    return os.path.join(output_dir, DSCHAT_WEIGHTS_NAME)


def check_end_token_rule(tokenizer, settings, sample="Human: Hi! Assistant: Hello."):
    """UserError unless Hugging Face's pooling (last token != pad) finds our end token on a typical padded
    row; returns that row's ids.

    Under DeepSpeed-Chat's rule (before the (n+1)-th pad, n = num_padding_at_beginning) they agree when a
    text holds exactly n pad-equal tokens before its end: OPT's `</s>` BOS with n=1, no BOS with n=0. A
    trailing pad-equal end-of-conversation token (GPT-2's `<|endoftext|>`) is fine: both rules then read
    the token before it. Under the last_token rule the pad is distinct from EOS, so they agree.
    """
    pad_id, skip = settings.pad_token_id, settings.num_padding_at_beginning
    text = tokenizer(sample + settings.end_of_conversation_token)["input_ids"]
    row = text + [pad_id] * 2
    ids, mask = torch.tensor([row]), torch.tensor([[1] * len(text) + [0, 0]])
    ours = int(row_ends(ids, mask, pad_id, skip, settings.end_token_rule)[0]) - 1
    theirs = max(i for i, token in enumerate(row) if token != pad_id)
    if ours != theirs:
        raise UserError(
            f"num_padding_at_beginning={skip} does not fit this tokenizer: in {row} (pad id {pad_id}) the "
            f"reward model reads position {ours} but a Hugging Face classifier would read {theirs}. The model "
            "was trained reading the wrong token (OPT needs 1, models without a pad-equal BOS need 0): "
            "retrain with the right main.py --num_padding_at_beginning before exporting.")
    return row


def added_special_tokens(tokenizer):
    """(text before, text after): the special tokens the tokenizer adds around a text (OPT: ('</s>', ''))."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    start = next(i for i in range(len(full)) if full[i:i + len(plain)] == plain)
    before, after = full[:start], full[start + len(plain):]
    return "".join(tokenizer.convert_ids_to_tokens(before)), "".join(tokenizer.convert_ids_to_tokens(after))


def scoring_chat_template(tokenizer):
    """The chat template to export, such that `apply_chat_template(messages, tokenize=True)` gives the ids
    training gives `messages`.

    `apply_chat_template` adds no special tokens: its ids are the rendered text's. Training (data/chat.py's
    ChatRenderer) drops a BOS the template writes and lets the tokenizer add its own special tokens: OPT's
    `</s>` BOS, which a template without BOS never writes. The exported template therefore writes those
    tokens itself (`EXPORTED_TEMPLATE`); checked on `CHECK_CONVERSATIONS`.
    """
    template = tokenizer.chat_template
    before, after = added_special_tokens(tokenizer)
    if not template or not (before or after):
        return template
    bos = ChatRenderer(tokenizer).bos or ""
    values = {"PREFIX": json.dumps(before), "SUFFIX": json.dumps(after), "BOS_LENGTH": str(len(bos)),
              "BOS": json.dumps(bos), "TEMPLATE": template}
    exported = re.sub(r"\b(PREFIX|SUFFIX|BOS_LENGTH|BOS|TEMPLATE)\b", lambda m: values[m.group(1)], EXPORTED_TEMPLATE)
    for messages in CHECK_CONVERSATIONS:
        ours = tokenizer(ChatRenderer(tokenizer)(messages))["input_ids"]
        theirs = tokenizer.apply_chat_template(messages, chat_template=exported, return_dict=True)["input_ids"]
        if theirs != ours:
            raise UserError(f"the exported chat template would give {theirs} for {messages}, but training gives "
                            f"{ours}: Hugging Face's apply_chat_template cannot reproduce this tokenizer's special "
                            "tokens around the rendered text, so the export is refused (please report it with the "
                            "chat template).")
    return exported


def export_sequence_classification(model_dir, output_dir, dtype=None):
    """Write `model_dir`'s reward model as a Hugging Face `AutoModelForSequenceClassification` folder.

    The base weights move under the classifier's base-model prefix (`model.` for OPT and Llama-style
    models, `transformer.` for GPT-2) and `v_head.weight` becomes the bias-free `score.weight`; config.json
    gains `num_labels=1`, `architectures` and `pad_token_id` = our pad (= eos under DeepSpeed-Chat's rule,
    a token distinct from eos under the last_token rule), so Hugging Face pools at the last non-pad
    token, which is our end token (see `check_end_token_rule`). The reward settings stay in config.json;
    the chat template is `scoring_chat_template`'s. `dtype` defaults to the saved one: config.json records
    it, and transformers loads in that dtype by default, so scores equal those of
    `RewardModel.from_pretrained`. Returns the classifier class name.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    settings, state, _ = read_reward_model_dir(model_dir)
    if os.path.realpath(output_dir) == os.path.realpath(model_dir):
        raise UserError(f"output folder {output_dir} is the model folder: exporting there would overwrite "
                        f"its {WEIGHTS_NAME}; pick another folder.")
    tokenizer = build_tokenizer(settings, source=model_dir)
    check_end_token_rule(tokenizer, settings)

    config = AutoConfig.from_pretrained(model_dir)
    config.num_labels = 1
    if settings.head.objective == REGRESSION:
        label_attributes(config, settings.head)
    config.pad_token_id = settings.pad_token_id
    try:
        model = AutoModelForSequenceClassification.from_config(config)
    except ValueError as error:
        raise UserError(f"transformers has no sequence-classification class for model type "
                        f"'{config.model_type}' ({error}); export is not possible for it.") from error
    model.config.architectures = [type(model).__name__]
    heads = state[HEAD_KEY]
    extra_heads = heads.size(0) > 1 and settings.head.objective != REGRESSION  # attributes: all K are logits
    if extra_heads:
        model.config.value_heads = heads_note(settings.head, heads.size(0))
    score = single_head(heads, settings.head) if extra_heads else heads
    prefix = model.base_model_prefix
    renamed = {("score.weight" if key == HEAD_KEY else prefix + key[len(OUR_TRANSFORMER_KEY):]): tensor
               for key, tensor in dict(state, **{HEAD_KEY: score}).items()}
    expected = {key: tensor.shape for key, tensor in model.state_dict().items()}
    got = {key: tensor.shape for key, tensor in renamed.items()}
    if expected != got:
        differ = sorted(set(expected) ^ set(got)) or sorted(k for k in got if got[k] != expected[k])
        raise UserError(f"{type(model).__name__} does not hold this reward model's weights one to one "
                        f"(first differences: {differ[:5]}): export is not supported for it.")
    model.load_state_dict(renamed, strict=True)
    tokenizer.chat_template = scoring_chat_template(tokenizer)

    def write(staging):
        model.to(dtype or state[HEAD_KEY].dtype).save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if extra_heads:
            from safetensors.torch import save_file
            save_file({HEADS_KEY: heads.to(dtype or heads.dtype).contiguous()}, os.path.join(staging, HEADS_NAME))
    write_folder(output_dir, write)
    return type(model).__name__


def label_attributes(config, head):
    """An attribute model's classifier config (main.py --objective regression): num_labels = K logits, logit k
    the rating of attribute k (id2label), and the weights whose dot product with the logits is the reward."""
    config.num_labels = len(head.attributes)
    config.id2label = dict(enumerate(head.attributes))
    config.label2id = {name: k for k, name in enumerate(head.attributes)}
    config.problem_type = "regression"
    config.attribute_weights = list(head.attribute_weights)  # reward = attribute_weights . logits


def heads_note(head, count):
    """config.json's `value_heads` of an exported ensemble (or multi-output head): where its K heads are and
    how `score` was made from them, for users who want each head's score (docs/ensembles.md)."""
    how = ("the mean of the heads' rows" if head.objective != REGRESSION
           else f"attribute_weights {list(head.attribute_weights)} . the heads' rows")
    return {"file": HEADS_NAME, "key": HEADS_KEY, "outputs": count, "objective": head.objective,
            "attributes": list(head.attributes), "score_weight": how,
            "per_head_scores": "hidden state where the classifier pools (its last non-pad token) @ v_heads.weight.T"}


def write_folder(output_dir, write):
    """Call `write(folder)` on output_dir's staging folder, then publish it whole; if writing fails (a full
    disk, no permission) output_dir is left as it was and the error says why."""
    try:
        os.makedirs(output_dir, exist_ok=True)
        staging = staging_folder(output_dir)
        write(staging)
    except WRITE_ERRORS as error:
        shutil.rmtree(os.path.join(output_dir, STAGING), ignore_errors=True)
        if not (isinstance(error, OSError) or is_disk_full(error)):
            raise
        raise UserError(f"writing the export to {output_dir} failed ({error}); {output_dir} is as it was: free "
                        "space or pick a folder you can write to, and export again.") from error
    publish(output_dir)
