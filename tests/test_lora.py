"""LoRA (model/lora.py) in memory: targets, trainable set, gradient checkpointing, merge and reload.

Run: python -m pytest tests/test_lora.py -q     (end-to-end LoRA runs: tests/test_zero_matrix.py)
"""
import pytest
import torch
from torch import nn

from model.create import load_tokenizer
from tests.fixtures import reward_model as tiny_reward_model
from model.lora import apply_lora, is_lora_param, merge_lora
from model.reward_model import RewardModel
from model.io import save_hf_model
from utils.errors import UserError
from training.optim import param_groups

EOT = "<|endoftext|>"
TEXTS = [" Human: hi Assistant: great, thanks, kind and helpful!", " Human: hi Assistant: that was a great idea.",
         " Human: hi Assistant: awful", " Human: hi Assistant: I hate it, rude and lazy."]


@pytest.fixture(scope="module")
def tokenizer(tiny_opt):
    return load_tokenizer(tiny_opt)


@pytest.fixture
def batch(tokenizer):
    """Two pairs as RewardModel takes them: 2 chosen rows, then 2 rejected rows."""
    return tokenizer([t + EOT for t in TEXTS], padding=True, return_tensors="pt")


def reward_model(tiny_opt, tokenizer):
    torch.manual_seed(0)
    return tiny_reward_model(tiny_opt, tokenizer, num_padding_at_beginning=1, dropout=0.0)


def scores(model, batch):
    with torch.no_grad():
        out = model(**batch)
    return torch.cat([out["chosen_mean_scores"], out["rejected_mean_scores"]])


def test_adapters_go_on_the_named_linear_layers_and_start_at_zero(tiny_opt, tokenizer, batch):
    model = reward_model(tiny_opt, tokenizer)
    before = scores(model, batch)
    apply_lora(model, 4, "decoder.layers.")
    from peft.tuners.lora import LoraLayer
    wrapped = sorted(name for name, module in model.named_modules() if isinstance(module, LoraLayer))
    per_layer = ["fc1", "fc2", "self_attn.k_proj", "self_attn.out_proj", "self_attn.q_proj", "self_attn.v_proj"]
    assert wrapped == [f"rwtransformer.decoder.layers.{i}.{name}" for i in range(2) for name in per_layer]
    assert isinstance(model.v_head, nn.Linear) and isinstance(model.rwtransformer.decoder.project_out, nn.Linear)
    layer = model.rwtransformer.decoder.layers[0].fc1
    assert layer.scaling["default"] == pytest.approx(1 / 4)  # DeepSpeed-Chat: lora_scaling / lora_dim
    assert layer.lora_A["default"].weight.abs().max() <= 4 ** -0.5 and not layer.lora_B["default"].weight.any()
    torch.testing.assert_close(scores(model, batch), before, atol=0, rtol=0)


@pytest.mark.parametrize("only_optimize_lora", [False, True])
def test_trainable_parameters_and_the_lora_learning_rate(tiny_opt, tokenizer, only_optimize_lora):
    model = apply_lora(reward_model(tiny_opt, tokenizer), 4, "decoder.layers.", only_optimize_lora)
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    adapters = {name for name, _ in model.named_parameters() if is_lora_param(name)}
    assert len(adapters) == 2 * 12 and "v_head.weight" in trainable
    if only_optimize_lora:
        assert trainable == adapters | {"v_head.weight"}
    else:
        assert trainable == {name for name, _ in model.named_parameters()}
    groups = param_groups(model, 0.1, lora_learning_rate=5e-4)
    names = {id(param): name for name, param in model.named_parameters()}
    with_lora_lr = {names[id(p)] for group in groups if group.get("lr") == 5e-4 for p in group["params"]}
    assert with_lora_lr == adapters
    assert sum(len(group["params"]) for group in groups) == len(trainable)


@pytest.mark.parametrize("use_reentrant", [False, True])
@pytest.mark.parametrize("only_optimize_lora", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(tiny_opt, tokenizer, batch, only_optimize_lora,
                                                         use_reentrant):
    """Reentrant checkpointing with every base weight frozen loses the adapters' gradients unless the
    embeddings' output requires grad (transformers' activation_checkpointing_enable sets that up)."""
    grads = []
    for checkpointing in (False, True):
        model = apply_lora(reward_model(tiny_opt, tokenizer), 4, "decoder.layers.", only_optimize_lora)
        with torch.no_grad():  # a trained-looking adapter, so lora_A gets a gradient too
            for name, param in model.named_parameters():
                if ".lora_B." in name:
                    param.normal_(0, 0.1)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
        model.train()
        model(**batch)["loss"].backward()
        grads.append({name: param.grad for name, param in model.named_parameters() if param.requires_grad})
    plain, checkpointed = grads
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        assert checkpointed[name] is not None, f"{name} got no gradient with checkpointing"
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)
    assert all(plain[name].abs().sum() > 0 for name in plain if is_lora_param(name))


def test_merge_gives_a_plain_model_with_the_same_scores(tiny_opt, tokenizer, batch, tmp_path):
    plain_keys = set(reward_model(tiny_opt, tokenizer).state_dict())
    base_scores = scores(reward_model(tiny_opt, tokenizer), batch)
    model = apply_lora(reward_model(tiny_opt, tokenizer), 4, "decoder.layers.", only_optimize_lora=True)
    with torch.no_grad():  # stand-in for training: adapters that change the scores
        for name, param in model.named_parameters():
            if is_lora_param(name):
                param.normal_(0, 0.5)
    trained = scores(model, batch)
    assert (trained - base_scores).abs().max() > 1e-2

    merge_lora(model)
    assert set(model.state_dict()) == plain_keys and not hasattr(model.rwtransformer, "peft_config")
    torch.testing.assert_close(scores(model, batch), trained, atol=1e-5, rtol=1e-5)
    save_hf_model(model, tokenizer, str(tmp_path), zero_stage=0)
    reloaded = RewardModel.from_pretrained(str(tmp_path))
    torch.testing.assert_close(scores(reloaded, batch), trained, atol=1e-5, rtol=1e-5)


def test_a_module_name_matching_nothing_is_a_user_error(tiny_opt, tokenizer):
    with pytest.raises(UserError, match="--lora_module_name 'model.layers.' matches no Linear layer"):
        apply_lora(reward_model(tiny_opt, tokenizer), 4, "model.layers.")
