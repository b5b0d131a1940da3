"""Exported reward models score like ours in plain transformers and in DeepSpeed-Chat's step-3 loader.

Run: python -m pytest tests/test_export_hf.py -q
"""
import errno
import json
import math
import os
import shutil

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from evaluation_scripts.export_hf import main as export_main
from model.create import load_tokenizer
from model.io import save_hf_model
from model.reward_model import RewardModel
from model.scoring import score_texts
from tests.fixtures import reward_model
from utils.errors import UserError

EOT = "<|endoftext|>"
# Different lengths in one batch: the longest row has no padding at all.
TEXTS = [" Human: hi Assistant: great, thanks!" + EOT,
         " Human: Tell me a joke. Assistant: I would rather not. That is a terrible idea, it is awful." + EOT,
         " Human: How do I bake bread? Assistant: Mix flour and water." + EOT,
         " no" + EOT]
# arch -> (the fixture of its tiny base, num_padding_at_beginning, the Hugging Face classifier)
ARCHS = {"opt": ("tiny_opt", 1, "OPTForSequenceClassification"),  # `</s>` BOS == pad: n = 1
         "gpt2": ("tiny_gpt2", 0, "GPT2ForSequenceClassification")}  # eot == pad, no BOS: n = 0


def save_reward_model(folder, base, arch, num_padding_at_beginning=None, dtype=torch.float32):
    """A tiny reward model on `base` with a random non-zero head, saved to `folder` as main.py saves it."""
    tokenizer = load_tokenizer(base)
    torch.manual_seed(0)
    model = reward_model(base, tokenizer, ARCHS[arch][1] if num_padding_at_beginning is None
                         else num_padding_at_beginning).eval()
    torch.nn.init.normal_(model.v_head.weight)
    save_hf_model(model.to(dtype), tokenizer, folder, zero_stage=0)
    return folder


@pytest.fixture(scope="module", params=["opt", "gpt2", "opt-bf16"])
def reward_dir(request, tmp_path_factory):
    """(arch, folder); "-bf16": trained and saved in bf16, as main.py does on CPU for an fp16 config."""
    arch, _, precision = request.param.partition("-")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    base = request.getfixturevalue(ARCHS[arch][0])
    return arch, save_reward_model(str(tmp_path_factory.mktemp(request.param)), base, arch, dtype=dtype)


def our_scores(model_dir):
    """What evaluation_scripts/evaluate.py reports for each text (in the saved dtype)."""
    model = RewardModel.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.pad_token_id = model.PAD_ID
    return score_texts(model, tokenizer, TEXTS, max_seq_len=512)


def test_plain_transformers_scores_match(reward_dir, tmp_path):
    arch, model_dir = reward_dir
    out = str(tmp_path / "hf")
    export_main([model_dir, out])

    config = AutoConfig.from_pretrained(out)
    saved = json.load(open(os.path.join(model_dir, "config.json")))
    assert config.num_labels == 1 and config.architectures == [ARCHS[arch][2]]
    assert config.pad_token_id == saved["reward_model"]["pad_token_id"] == config.eos_token_id
    assert config.reward_model == saved["reward_model"]

    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == ARCHS[arch][2] and model.score.bias is None
    assert model.dtype == RewardModel.from_pretrained(model_dir).v_head.weight.dtype
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any(dim=1).sum() == len(TEXTS) - 1  # all but the longest padded
    with torch.no_grad():
        got = model(**batch).logits
    expected = our_scores(model_dir)
    assert got.shape == (len(TEXTS), 1)
    assert expected.std() > 0.01  # the head is not the zero init: scores differ between texts
    torch.testing.assert_close(got[:, 0].float(), expected, atol=1e-5, rtol=0)


def test_texts_scored_one_by_one_match_too(reward_dir, tmp_path):
    """No padding at all (batch of one): Hugging Face reads the last token that is not pad."""
    _, model_dir = reward_dir
    out = str(tmp_path / "hf")
    export_main([model_dir, out])
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    with torch.no_grad():
        got = torch.cat([model(**tokenizer(text, return_tensors="pt")).logits[:, 0] for text in TEXTS])
    torch.testing.assert_close(got.float(), our_scores(model_dir), atol=1e-5, rtol=0)


class DeepSpeedChatCritic(nn.Module):
    """DeepSpeed-Chat's RewardModel as its step 3 builds it: only the parts that own weights."""

    def __init__(self, base_model, transformer_key):
        super().__init__()
        config = base_model.config
        width = config.word_embed_proj_dim if hasattr(config, "word_embed_proj_dim") else (
            config.hidden_size if hasattr(config, "hidden_size") else config.n_embd)
        self.v_head = nn.Linear(width, 1, bias=False)
        setattr(self, transformer_key, base_model)
        self.transformer_key = transformer_key

    def values(self, input_ids, attention_mask):
        hidden = getattr(self, self.transformer_key)(input_ids, attention_mask=attention_mask)[0]
        return self.v_head(hidden).squeeze(-1)


def load_like_deepspeed_chat_step3(critic_dir, tokenizer, transformer_key):
    """create_critic_model(critic_dir, tokenizer, ..., rlhf_training=True), minus DeepSpeed."""
    base = AutoModel.from_config(AutoConfig.from_pretrained(critic_dir))
    base.config.end_token_id = tokenizer.eos_token_id
    base.config.pad_token_id = base.config.eos_token_id
    base.resize_token_embeddings(int(8 * math.ceil(len(tokenizer) / 8.0)))
    critic = DeepSpeedChatCritic(base, transformer_key)
    state = torch.load(os.path.join(critic_dir, "pytorch_model.bin"), map_location="cpu")
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in critic.state_dict().items()}
    critic.load_state_dict(state, strict=True)
    return critic.eval()


@pytest.mark.parametrize("transformer_key", ["rwtransformer", "rwtranrsformer"])
def test_deepspeed_chat_critic_loads_and_scores(reward_dir, tmp_path, transformer_key):
    _, model_dir = reward_dir
    out = str(tmp_path / "critic")
    export_main([model_dir, out, "--format", "deepspeed_chat", "--dschat_key", transformer_key])
    assert {"config.json", "pytorch_model.bin"} <= set(os.listdir(out))

    # Step 3 loads the tokenizer as DeepSpeed-Chat does: pad = eos, right padding.
    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    critic = load_like_deepspeed_chat_step3(out, tokenizer, transformer_key)
    critic.to(torch.load(os.path.join(out, "pytorch_model.bin"))["v_head.weight"].dtype)  # as its engine casts
    settings = json.load(open(os.path.join(model_dir, "config.json")))["reward_model"]
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        values = critic.values(batch["input_ids"], batch["attention_mask"])
    scores = []
    for ids, row in zip(batch["input_ids"], values):  # DeepSpeed-Chat's end-score rule, per row
        pads = (ids == tokenizer.pad_token_id).nonzero()
        end = pads[settings["num_padding_at_beginning"]].item() if len(pads) > settings[
            "num_padding_at_beginning"] else ids.numel()
        scores.append(row[end - 1])
    torch.testing.assert_close(torch.stack(scores).float(), our_scores(model_dir), atol=1e-5, rtol=0)


def test_deepspeed_chat_weights_in_place(reward_dir):
    """MODEL_DIR itself becomes a step-3 critic folder: only pytorch_model.bin is added."""
    _, model_dir = reward_dir
    before = set(os.listdir(model_dir))
    export_main([model_dir, model_dir, "--format", "deepspeed_chat"])
    assert set(os.listdir(model_dir)) - before <= {"pytorch_model.bin"}
    state = torch.load(os.path.join(model_dir, "pytorch_model.bin"), map_location="cpu")
    assert "v_head.weight" in state and all(k == "v_head.weight" or k.startswith("rwtransformer.") for k in state)


def fake_checkpoints(root, complete_steps, incomplete_steps):
    """An output folder with checkpoint folders (a COMPLETE marker in the complete ones) and no model."""
    for step in complete_steps + incomplete_steps:
        folder = os.path.join(root, "checkpoints", f"step-{step}")
        os.makedirs(folder)
        open(os.path.join(folder, "mp_rank_00_model_states.pt"), "w").close()
        if step in complete_steps:
            open(os.path.join(folder, "COMPLETE"), "w").close()
    return root


EXPORT_ERRORS = {  # case -> (function(tmp_path, model_dir, base LM) -> (MODEL_DIR, OUT_DIR), what the message says)
    "plain_lm": (lambda t, m, lm: (lm, t / "out"), "not a reward model"),
    "missing_model": (lambda t, m, lm: (t / "missing", t / "out"), "model folder {t}/missing: no such folder"),
    "copied_checkpoint_without_marker": (  # found by DeepSpeed's files, outside a checkpoints/ folder
        lambda t, m, lm: (shutil.copytree(os.path.join(fake_checkpoints(t / "run", [], [5]), "checkpoints", "step-5"),
                                          t / "backup"), t / "out"),
        "backup is an incomplete checkpoint: it has no COMPLETE marker, which a checkpoint gets once all its files "
        "are written, so the run stopped while saving it. Export"),
    "model_is_a_file": (lambda t, m, lm: (t / "file", t / "out"), "it is a file; pass main.py's --output_dir"),
    "output_is_a_file": (lambda t, m, lm: (m, t / "file"), "output folder {t}/file: it is a file: pass a folder"),
    "output_under_a_file": (lambda t, m, lm: (m, t / "file" / "out"), "{t}/file is a file, not a folder"),
    "checkpoint_without_marker": (
        lambda t, m, lm: (os.path.join(fake_checkpoints(t / "run", [2], [3]), "checkpoints", "step-3"), t / "out"),
        "step-3 is an incomplete checkpoint: it has no COMPLETE marker, which a checkpoint gets once all its files "
        "are written, so the run stopped while saving it (the newest complete one is {t}/run/checkpoints/step-2). "
        "Export a complete one"),
    "only_checkpoints": (lambda t, m, lm: (fake_checkpoints(t / "run", [2, 4], []), t / "out"),
                         "holds no saved model yet: it is a run's output folder, which holds checkpoints in "
                         "checkpoints/ (the newest complete one is {t}/run/checkpoints/step-4)"),
    "a_classifier_export": (lambda t, m, lm: (export_main([m, str(t / "hf")]) or t / "hf", t / "out"),
                            "holds a Hugging Face classifier (score.weight), as export_hf.py writes it"),
}


@pytest.mark.parametrize("case", sorted(EXPORT_ERRORS))
def test_errors_are_plain_messages(reward_dir, tmp_path, capsys, request, case):
    """Each wrong MODEL_DIR or OUT_DIR: one `error:` line naming the folder, the cause and what to pass."""
    arch, model_dir = reward_dir
    (tmp_path / "file").write_text("x")
    make, message = EXPORT_ERRORS[case]
    source, out = make(tmp_path, model_dir, request.getfixturevalue(ARCHS[arch][0]))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        export_main([str(source), str(out)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message.format(t=tmp_path) in err
    assert not os.path.exists(tmp_path / "out")


def test_export_over_itself_is_refused(reward_dir):
    _, model_dir = reward_dir
    with pytest.raises(UserError, match="would overwrite"):
        export_main([model_dir, model_dir, "--debug"])


def test_a_failed_write_leaves_the_folder_as_it_was(reward_dir, tmp_path, monkeypatch, capsys):
    """A full disk while writing: a plain error, and OUT_DIR keeps the export it held (no staging left)."""
    _, model_dir = reward_dir
    out = str(tmp_path / "hf")
    export_main([model_dir, out])
    before = {name: open(os.path.join(out, name), "rb").read() for name in os.listdir(out)}

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr("transformers.PreTrainedModel.save_pretrained", disk_full)
    with pytest.raises(SystemExit):
        export_main([model_dir, out, "--overwrite"])
    assert "No space left on device" in capsys.readouterr().err
    assert {name: open(os.path.join(out, name), "rb").read() for name in os.listdir(out)} == before


def test_wrong_num_padding_at_beginning_is_refused(tiny_gpt2, tmp_path):
    """A GPT-2 trained with n=1 reads the eot token, which no pad_token_id choice reproduces."""
    model_dir = save_reward_model(str(tmp_path / "gpt2_reward"), tiny_gpt2, "gpt2", num_padding_at_beginning=1)
    with pytest.raises(UserError, match="num_padding_at_beginning=1 does not fit"):
        export_main([model_dir, str(tmp_path / "out"), "--debug"])
