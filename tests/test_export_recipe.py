"""The chat recipe in docs/export.md, run as written on an exported model, scores conversations exactly as
the project does (RewardModel on training's tokens), whether or not the chat template writes a BOS.

Run: python -m pytest tests/test_export_recipe.py -q      (about 30 s on 2 cores)
"""
import os
import re

import pytest
import torch

from data import synthetic
from data.chat import ChatRenderer
from evaluation_scripts.export_hf import main as export_main
from model.create import build_tokenizer, load_tokenizer
from model.export import scoring_chat_template
from model.reward_model import RewardModel
from model.scoring import score_texts
from model.tiny import CHAT_STYLES, build_tiny_chat, build_tiny_gpt2, build_tiny_opt
from tests.fixtures import ROOT, run_main

MAX_SEQ_LEN = 128  # the synthetic conversations are longer: they are truncated, the short ones below padded
# Templates without and with a BOS: training drops the one the template writes, OPT's tokenizer adds `</s>`.
TEMPLATES = {"no_bos": "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}\n{% endfor %}\n",
             "bos": "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"}
SHORT = [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello, great and kind!"}],
         [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Joke?"},
          {"role": "assistant", "content": "I would rather not, that is awful."}]]


def docs_recipe():
    """The python block of docs/export.md that scores conversations."""
    with open(os.path.join(ROOT, "docs", "export.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    (recipe,) = [block for block in blocks if "apply_chat_template" in block]
    return recipe


def conversations():
    _, test = synthetic.make_splits(64, synthetic.CHAT_NAME)
    return SHORT + [row[side] for row in test[:3] for side in ("chosen", "rejected")]


@pytest.fixture(scope="module", params=sorted(TEMPLATES))
def trained(request, tmp_path_factory):
    """A tiny OPT reward model trained briefly by main.py with --chat_template (the template named)."""
    root = tmp_path_factory.mktemp(request.param)
    template = root / "template.jinja"
    template.write_text(TEMPLATES[request.param])
    result = run_main(["--model_name_or_path", build_tiny_opt(str(root / "base")), "--data_path",
                       "synthetic/conversations:64", "--chat_template", template, "--output_dir", root / "model",
                       "--data_output_path", root / "cache", "--data_split", "0,10,0", "--max_seq_len", MAX_SEQ_LEN,
                       "--per_device_train_batch_size", "8", "--learning_rate", "1e-3"])
    assert result.returncode == 0, result.stdout[-3000:]
    return str(root / "model")


def project_scores(model_dir, messages):
    """RewardModel's scores on training's tokens: ChatRenderer's text, tokenised and truncated as in training."""
    model = RewardModel.from_pretrained(model_dir).eval()
    tokenizer = build_tokenizer(model.settings, source=model_dir)
    render = ChatRenderer(tokenizer)
    return score_texts(model, tokenizer, [render(m) for m in messages], model.settings.max_seq_len)


def test_docs_recipe_scores_like_the_project(trained, tmp_path):
    hf_dir = str(tmp_path / "hf")
    export_main([trained, hf_dir])
    messages = conversations()
    namespace = {"HF_DIR": hf_dir, "conversations": messages}
    with torch.no_grad():
        exec(docs_recipe(), namespace)
    batch, ours = namespace["batch"], project_scores(trained, messages)
    assert (batch["attention_mask"] == 0).any() and batch["input_ids"].shape[1] == MAX_SEQ_LEN  # padded and cut
    assert ours.std() > 0.01  # a random head that reads different tokens gives different scores
    torch.testing.assert_close(namespace["rewards"].float(), ours.float(), atol=1e-5, rtol=0)


def tokenizers(root):
    """name -> a tokenizer as a trained model saves it: OPT (adds `</s>`) and GPT-2 (adds nothing) with a
    template with and without BOS, and the tiny chat styles with their own templates."""
    found = {}
    for arch, build in (("opt", build_tiny_opt), ("gpt2", build_tiny_gpt2)):
        base = build(os.path.join(root, arch))
        for name, template in TEMPLATES.items():
            found[f"{arch}-{name}"] = load_tokenizer(base, chat_template=template)
    for style in CHAT_STYLES:
        found[style] = load_tokenizer(build_tiny_chat(os.path.join(root, style), style), pad_token="<|pad|>")
    return found


def test_exported_template_gives_training_ids(tmp_path):
    """The mechanism, for every kind of tokenizer: apply_chat_template with the exported template (no
    special tokens added) gives the ids training gives each conversation (BOS dropped, the tokenizer's added)."""
    _, test = synthetic.make_splits(40, synthetic.CHAT_NAME)
    messages = SHORT[:1] + [row["chosen"] for row in test]
    for name, tokenizer in tokenizers(str(tmp_path)).items():
        render, exported = ChatRenderer(tokenizer), scoring_chat_template(tokenizer)
        for conversation in messages:
            ours = tokenizer(render(conversation))["input_ids"]
            theirs = tokenizer.apply_chat_template(conversation, chat_template=exported)["input_ids"]
            assert theirs == ours, (name, conversation)
