"""Reward models on other base architectures (GPT-2, GPT-NeoX, Llama, BLOOM configs), tiny and random.

Run: python -m pytest tests/test_architectures.py -q    (GPT-2 through main.py: tests/test_zero_matrix.py)
"""
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from model.create import load_tokenizer
from tests.fixtures import reward_model
from tests.reference import reference_pairwise_loss


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


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "llama", "bloom"])
def test_reward_model_builds_trains_and_matches_the_loop(arch, tiny_gpt2, tmp_path):
    """The value head reads the base's width, the batched loss and scores match the per-pair loop, and five
    optimizer steps on two pairs move the base's weights as well as the head's and lower the loss."""
    folder = tiny_gpt2
    if arch != "gpt2":
        folder = str(tmp_path / arch)
        tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
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

    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    losses = [out["loss"].item()]
    for step in range(5):  # from_pretrained left the base in eval mode: no dropout, the same loss each pass
        if step:
            out = model(**batch)
            losses.append(out["loss"].item())
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
    with torch.no_grad():
        losses.append(model(**batch)["loss"].item())
    assert losses[-1] < losses[0] - 0.2, losses
    moved = {name for name, param in model.named_parameters() if not torch.equal(param, before[name])}
    assert "v_head.weight" in moved and any(name.startswith("rwtransformer.") for name in moved), moved
