"""Reward models on other base architectures (GPT-2, GPT-NeoX, Llama, BLOOM configs), tiny and random.

Run: python -m pytest tests/test_architectures.py -q
"""
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from model.create import load_tokenizer
from model.tiny import build_tiny_gpt2
from tests.reference import reference_pairwise_loss
from tests.fixtures import check_saved_model, reward_model, eval_accuracies, run_main, step_losses


def tiny_config(name, vocab_size):
    from transformers import BloomConfig, GPTNeoXConfig, LlamaConfig
    common = {"vocab_size": vocab_size, "bos_token_id": 0, "eos_token_id": 0}
    return {
        "gpt_neox": GPTNeoXConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                                  max_position_embeddings=256, **common),
        "llama": LlamaConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             intermediate_size=96, max_position_embeddings=256, **common),
        "bloom": BloomConfig(hidden_size=48, n_layer=2, n_head=4, **common),
    }[name]


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    return build_tiny_gpt2(str(tmp_path_factory.mktemp("gpt2")))


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "llama", "bloom"])
def test_reward_model_builds_trains_and_matches_the_loop(arch, gpt2_folder, tmp_path):
    folder = gpt2_folder
    if arch != "gpt2":
        folder = str(tmp_path / arch)
        tokenizer = AutoTokenizer.from_pretrained(gpt2_folder)
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(tiny_config(arch, len(tokenizer))).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    tokenizer = load_tokenizer(folder)
    model = reward_model(folder, tokenizer, num_padding_at_beginning=0)
    assert model.v_head.in_features == model.config.hidden_size
    texts = [" Human: hi Assistant: thanks, great!", " Human: hi Assistant: great and kind, thanks a lot!",
             " Human: hi Assistant: awful.", " Human: hi Assistant: no"]
    batch = tokenizer([t + "<|endoftext|>" for t in texts], padding=True, return_tensors="pt")
    out = model(**batch)
    values = model.forward_value(**batch, return_value_only=True)
    loss, chosen, rejected = reference_pairwise_loss(batch["input_ids"], values, tokenizer.pad_token_id, 0)
    torch.testing.assert_close(out["loss"], loss, atol=1e-5, rtol=0)
    torch.testing.assert_close(out["chosen_mean_scores"], chosen, atol=1e-5, rtol=0)
    out["loss"].backward()
    assert model.v_head.weight.grad.abs().sum() > 0


def test_gpt2_trains_through_main(gpt2_folder, pair_folder, tmp_path):
    result = run_main(["--model_name_or_path", gpt2_folder, "--num_padding_at_beginning", "0",
                       "--data_path", pair_folder, "--output_dir", tmp_path / "out", "--data_output_path",
                       tmp_path / "cache", "--data_split", "0,10,0", "--max_seq_len", "64",
                       "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "1",
                       "--learning_rate", "2e-3", "--num_train_epochs", "2"])
    assert result.returncode == 0, result.stdout[-3000:]
    losses, accuracies = step_losses(result.stdout), eval_accuracies(result.stdout)
    assert sum(losses[-8:]) / 8 < sum(losses[:8]) / 8 - 0.05, losses
    assert accuracies[-1] > accuracies[0] + 0.15, accuracies
    check_saved_model(str(tmp_path / "out"), pair_folder, accuracies[-1])
