"""The default run is DeepSpeed-Chat's step 2: its sample order, kept pairs, fp32 loss, --eval_iters pairs
and weight-decay groups; the speed features change speed, not results.

Run: python -m pytest tests/test_fidelity.py -q
"""
import json
import math

import datasets
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from data import PairCollator
from data.sampler import train_sampler
from model.reward_model import RewardModel, loss_spans, pairwise_loss
from tests.fixtures import reward_model, row_settings, run_main, write_jsonl
from tests.reference import reference_grouped_parameters, reference_pairwise_loss
from training.evaluation import eval_loader
from training.optim import param_groups
from utils.settings import LossOptions


@pytest.mark.parametrize("world", [1, 2])
def test_default_train_order_is_distributed_samplers_whatever_the_seed(world):
    data = list(range(37))
    for rank in range(world):
        expected = list(DistributedSampler(data, num_replicas=world, rank=rank))  # DeepSpeed-Chat's sampler
        for seed in (1234, 7):
            assert list(train_sampler(data, 4, seed=seed, num_replicas=world, rank=rank)) == expected


def test_fp32_loss_upcasts_each_reward_before_subtracting():
    torch.manual_seed(0)
    ids = torch.tensor([[2, 5, 6, 7, 8, 9, 2, 2], [2, 5, 6, 7, 2, 2, 2, 2],
                        [2, 5, 9, 9, 9, 9, 9, 2], [2, 5, 8, 2, 2, 2, 2, 2]])
    rewards = (torch.randn(ids.shape) * 3 + 40).to(torch.bfloat16)  # large rewards: bf16 rounding shows
    expected, *_ = reference_pairwise_loss(ids, rewards, 2, 1, compute_fp32_loss=True)
    loss, *_ = pairwise_loss(rewards[:2], rewards[2:], loss_spans(ids[:2], ids[2:], 2, 1),
                             LossOptions(compute_fp32_loss=True))
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=0)


def test_eval_iters_scores_the_pairs_of_deepspeed_chats_first_batches():
    lengths = [3 + (i * 7) % 40 for i in range(50)]
    eval_set = datasets.Dataset.from_list([{"chosen_input_ids": [2] + [5] * n, "rejected_input_ids": [2, 6]}
                                           for n in lengths])
    batch_size, iters = 4, 3
    # DeepSpeed-Chat: DataLoader(eval_dataset, sampler=DistributedSampler(eval_dataset)), the first N batches
    dschat = DataLoader(list(range(len(eval_set))), batch_size=batch_size, sampler=DistributedSampler(
        list(range(len(eval_set))), num_replicas=1, rank=0))
    expected = sorted(i for _, batch in zip(range(iters), dschat) for i in batch.tolist())
    loader, num_real = eval_loader(eval_set, batch_size, pad_token_id=1, max_batches=iters)
    assert sorted(loader.dataset.indices[:num_real]) == expected
    longest = sorted(range(len(lengths)), key=lambda i: -lengths[i])[:batch_size * iters]
    assert sorted(longest) != expected  # not a length-biased cut
    everything, num_all = eval_loader(eval_set, batch_size, pad_token_id=1)
    assert sorted(everything.dataset.indices[:num_all]) == list(range(len(eval_set)))


def tiny_base(arch):
    from transformers import AutoModel, GPT2Config, LlamaConfig, OPTConfig
    config = {"opt": OPTConfig(vocab_size=64, hidden_size=32, word_embed_proj_dim=16, num_hidden_layers=2,
                               num_attention_heads=4, ffn_dim=64, do_layer_norm_before=False),
              "gpt2": GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4),
              "llama": LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=64)}[arch]
    return AutoModel.from_config(config)


@pytest.mark.parametrize("arch, lora", [("opt", False), ("gpt2", False), ("llama", False), ("opt", True),
                                        ("llama", True)])  # GPT-2's Conv1D layers take no LoRA
def test_weight_decay_groups_are_deepspeed_chats(arch, lora):
    from model.lora import apply_lora
    model = RewardModel(tiny_base(arch), row_settings(1))
    if lora:
        apply_lora(model, 4, "layers.")
    names = {id(p): n for n, p in model.named_parameters()}
    got = [([names[id(p)] for p in g["params"]], g["weight_decay"], g.get("lr"))
           for g in param_groups(model, 0.1, 5e-4 if lora else None)]
    expected = reference_grouped_parameters(model, 0.1, 5e-4)
    if not lora:
        expected = [(n, wd, None) for n, wd, _ in expected]
    assert got == expected
    if arch == "gpt2":  # DeepSpeed-Chat's list does not match GPT-2's ln_1/ln_2: they are decayed
        assert "rwtransformer.h.0.ln_1.weight" in got[0][0]


def test_dynamic_padding_and_cpu_training_rules_give_the_max_len_padded_loss(tiny_opt, opt_tokenizer):
    """Training mode with dropout 0: the CPU attention switch and dropout path are active, and a batch
    padded to its longest row gives the loss of the same batch padded to max_seq_len (DeepSpeed-Chat)."""
    torch.manual_seed(0)
    model = reward_model(tiny_opt, opt_tokenizer, 1, dropout=0.0).train()
    rows = [{"chosen_input_ids": opt_tokenizer(c)["input_ids"], "rejected_input_ids": opt_tokenizer(r)["input_ids"]}
            for c, r in [(" Human: hi Assistant: great thanks", " Human: hi Assistant: awful"),
                         (" Human: a b c d e f Assistant: kind", " Human: a b c d e f Assistant: rude and lazy"),
                         (" Human: x Assistant: same", " Human: x Assistant: same")]]
    dynamic = PairCollator(opt_tokenizer.pad_token_id)(rows)
    losses = [model(**dynamic)["loss"]]
    for max_len in (64, 256):  # eager attention at 64, SDPA above the CPU switch's threshold
        padded = PairCollator(opt_tokenizer.pad_token_id, pad_to_length=max_len)(rows)
        assert padded["input_ids"].size(1) == max_len > dynamic["input_ids"].size(1)
        losses.append(model(**padded)["loss"])
    for loss in losses[1:]:
        torch.testing.assert_close(loss, losses[0], atol=1e-5, rtol=0)


def test_identical_pairs_are_kept_and_the_step_count_follows(tiny_opt, tmp_path):
    shared = " Human: a very long shared question that fills the whole window of tokens? Assistant:"
    pairs = [{"prompt": f" Human: item {i}? Assistant:", "chosen": " great thanks", "rejected": " awful"}
             for i in range(24)] + [{"prompt": shared, "chosen": " kind", "rejected": " rude"}] * 16
    write_jsonl(tmp_path / "train.jsonl", pairs)
    write_jsonl(tmp_path / "test.jsonl", pairs[:8] + pairs[-8:])
    steps = {}
    for flags in ([], ["--drop_identical_pairs"]):
        out = tmp_path / f"out{len(flags)}"
        result = run_main(["--model_name_or_path", tiny_opt, "--data_path", str(tmp_path), "--data_split", "0,1,0",
                           "--max_seq_len", "16", "--per_device_train_batch_size", "4",
                           "--gradient_accumulation_steps", "1", "--dropout", "0", "--dtype", "fp32",
                           "--data_output_path", str(tmp_path / "cache"), "--output_dir", str(out)] + flags)
        assert result.returncode == 0, result.stdout[-3000:]
        results = json.loads((out / "train_results.json").read_text())
        steps[bool(flags)] = results["optimizer_steps"]
        if not flags:  # identical pairs tie: wrong, as in DeepSpeed-Chat, and counted as ties
            assert results["num_pairs"] == 16 and results["ties"] == 8 and results["accuracy"] <= 0.5
    assert steps == {False: math.ceil(40 / 4), True: math.ceil(24 / 4)}
