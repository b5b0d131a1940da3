"""Save -> reload gives the same model. Run: python -m pytest tests/test_save_load.py -q"""
import pytest
import torch
from transformers import AutoTokenizer

from model.create import load_tokenizer
from tests.fixtures import reward_model
from model.reward_model import RewardModel
from model.io import save_hf_model
from utils.errors import UserError


def test_reload_gives_identical_scores(tiny_opt, tmp_path):
    tokenizer = load_tokenizer(tiny_opt)
    torch.manual_seed(0)
    model = reward_model(tiny_opt, tokenizer, num_padding_at_beginning=1).eval()
    torch.nn.init.normal_(model.v_head.weight)  # a trained-looking head, not the init
    save_hf_model(model, tokenizer, str(tmp_path), zero_stage=0)

    loaded = RewardModel.from_pretrained(str(tmp_path))
    reloaded_tokenizer = AutoTokenizer.from_pretrained(str(tmp_path))
    assert reloaded_tokenizer.pad_token_id == tokenizer.eos_token_id
    assert loaded.num_padding_at_beginning == 1 and loaded.PAD_ID == tokenizer.pad_token_id
    texts = [" Human: hi Assistant: great, thanks!<|endoftext|>", " Human: hi Assistant: awful<|endoftext|>"]
    batch = reloaded_tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**batch)
        got = loaded(**batch)
    torch.testing.assert_close(got["chosen_mean_scores"], expected["chosen_mean_scores"], atol=0, rtol=0)
    torch.testing.assert_close(got["loss"], expected["loss"], atol=0, rtol=0)
    torch.testing.assert_close(loaded.v_head.weight, model.v_head.weight, atol=0, rtol=0)


def test_plain_lm_folder_is_not_a_reward_model(tiny_opt):
    with pytest.raises(UserError, match="not a reward model"):
        RewardModel.from_pretrained(tiny_opt)
