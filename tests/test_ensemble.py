"""Reward ensembles (--num_heads K): the multi-output value head, how its outputs combine into one reward, each
head's seeded init, the ensemble loss and its bootstrap, uncertainty, evaluation, scoring, serving, export
and resume; one head stays DeepSpeed-Chat's head bit for bit.

Run: python -m pytest tests/test_ensemble.py -q      (the 2-rank ZeRO-3 resume is marked slow)
"""
import json
import os
import random
import shutil
import signal
import sys

import pytest
import torch
import transformers

from data.collator import IndexedPairs, PairCollator, bootstrap_weights
from main import parse_args
from model.reward_model import RewardModel, combine, ensemble_loss, init_heads, loss_spans, shared_lengths
from tests.fixtures import finish, learnable_pairs, reward_model, row_settings, run_until
from tests.reference import reference_pairwise_loss
from utils import validate
from utils.settings import HeadOptions, Settings

PAD = 1


def tiny_base(seed=0):
    """A 2-layer OPT base (width 16 at the head: word_embed_proj_dim), no dropout, built from torch's RNG."""
    torch.manual_seed(seed)
    config = transformers.OPTConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                    max_position_embeddings=64, ffn_dim=64, word_embed_proj_dim=16,
                                    pad_token_id=PAD, dropout=0.0, attention_dropout=0.0)
    return transformers.AutoModel.from_config(config, attn_implementation="eager")


def ensemble(num_heads, seed=0, **head):
    return RewardModel(tiny_base(), row_settings(PAD, head=HeadOptions(num_heads=num_heads, seed=seed, **head)))


def rows(count=4, length=20, seed=3):
    """(2B, L) right-padded rows (BOS 2, a shared prompt, different answers, PAD at the end) and their mask."""
    generator = torch.Generator().manual_seed(seed)
    ids, mask = torch.full((2 * count, length), PAD), torch.zeros(2 * count, length, dtype=torch.long)
    for i in range(count):
        prompt = torch.randint(3, 96, (int(torch.randint(1, 8, (), generator=generator)),), generator=generator)
        for row in (i, count + i):
            answer = torch.randint(3, 96, (int(torch.randint(1, 8, (), generator=generator)),), generator=generator)
            text = torch.cat([torch.tensor([2]), prompt, answer, torch.tensor([PAD])])
            ids[row, :len(text)], mask[row, :len(text)] = text, 1
    return ids, mask


def test_one_head_is_deepspeed_chats_head_bit_for_bit():
    """Same shape, same draw from torch's global RNG, same values as nn.Linear(width, 1) after the base model."""
    model = ensemble(1)
    base = tiny_base()
    expected = torch.nn.Linear(16, 1, bias=False)
    assert torch.equal(model.v_head.weight, expected.weight)
    ids, mask = rows()
    with torch.no_grad():
        plain = expected(base(ids, attention_mask=mask)[0]).squeeze(-1)
        assert torch.equal(model._values(ids, mask), plain)
        assert torch.equal(model.head_outputs(ids, mask)[..., 0], plain)


def test_each_head_has_its_own_seeded_init_whatever_the_number_of_heads():
    three, five, other_seed = ensemble(3, seed=7), ensemble(5, seed=7), ensemble(3, seed=8)
    assert three.v_head.weight.shape == (3, 16)
    assert torch.equal(three.v_head.weight, five.v_head.weight[:3])
    assert not torch.equal(three.v_head.weight, other_seed.v_head.weight)
    assert len({tuple(row.tolist()) for row in five.v_head.weight}) == 5
    bound = 16 ** -0.5
    assert five.v_head.weight.abs().max() <= bound and five.v_head.weight.std() > bound / 3
    weight = torch.empty(2, 16)
    init_heads(weight, 7)
    assert torch.equal(weight, three.v_head.weight[:2])


def test_combine_mean_of_heads_weights_of_attributes_and_one_output():
    outputs = torch.tensor([[[1.0, 2.0, 6.0]], [[0.0, -3.0, 0.0]]])  # (2, 1, 3)
    assert torch.equal(combine(outputs, HeadOptions(num_heads=3)), torch.tensor([[3.0], [-1.0]]))
    regression = HeadOptions(objective="regression", attributes=("a", "b", "c"), attribute_weights=(1.0, 0.5, -1.0))
    assert regression.outputs == 3
    assert torch.equal(combine(outputs, regression), torch.tensor([[-4.0], [-1.5]]))
    assert torch.equal(combine(outputs[..., :1]), outputs[..., 0])


def test_reward_is_the_combined_heads_on_the_plain_and_shared_prompt_paths():
    model = ensemble(3, seed=1)
    ids, mask = rows()
    with torch.no_grad():
        heads = model.head_outputs(ids, mask)
        assert heads.shape == (*ids.shape, 3)
        torch.testing.assert_close(model._values(ids, mask), heads.mean(-1), rtol=0, atol=1e-7)
        shared = shared_lengths(ids, mask, PAD, 1, "deepspeed_chat")
        shared_heads = model.head_outputs(ids, mask, shared=shared)
        shared_reward = model._values(ids, mask, shared=shared)
    half = ids.size(0) // 2
    ends = model.end_positions(ids, mask)
    read = (torch.arange(ids.size(1)) >= shared.repeat(2)[:, None]) & (torch.arange(ids.size(1)) < ends[:, None])
    torch.testing.assert_close(shared_heads[read], heads[read], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared_reward[read], heads.mean(-1)[read], atol=1e-5, rtol=1e-5)
    assert half and read.any()


def test_head_options_survive_the_saved_json():
    settings = row_settings(PAD, head=HeadOptions(num_heads=4, bootstrap=True, conservative_lambda=0.5, seed=9,
                                                  attributes=("a", "b"), attribute_weights=(0.3, 0.7)))
    assert Settings.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings
    assert Settings.from_dict({"model_name_or_path": "m"}).head == HeadOptions()  # a model saved before heads


@pytest.mark.parametrize("flags, message", [
    (["--num_heads", "0"], "--num_heads must be an integer >= 1"),
    (["--head_bootstrap"], "--head_bootstrap needs an ensemble: add --num_heads 2"),
    (["--num_heads", "1", "--conservative_lambda", "1"], "--conservative_lambda needs an ensemble"),
    (["--num_heads", "3", "--conservative_lambda", "-1"], "--conservative_lambda must be a finite number >= 0"),
])
def test_head_flags_are_checked_before_any_model_loads(tmp_path, flags, message):
    args, _ = parse_args(["--output_dir", str(tmp_path / "out"), *flags])
    assert any(message in problem for problem in validate.flag_problems(args))


def test_valid_head_flags_pass():
    args, _ = parse_args(["--output_dir", "/tmp/unused", "--num_heads", "3", "--head_bootstrap",
                          "--conservative_lambda", "1.5"])
    assert validate.flag_problems(args) == []


# ---- the loss --------------------------------------------------------------------------------------

def test_ensemble_loss_is_the_mean_of_each_heads_deepspeed_chat_loss():
    """K = 3 heads on random per-token outputs: the loss is the mean over heads of DeepSpeed-Chat's per-pair loop
    on that head's values; with bootstrap weights each pair's loss in head k is weighted (mean over B pairs)."""
    ids, mask = rows(count=5)
    heads = torch.randn(ids.size(0), ids.size(1), 3, generator=torch.Generator().manual_seed(0))
    half = ids.size(0) // 2
    spans = loss_spans(ids[:half], ids[half:], PAD, 1, mask[:half], mask[half:])
    loss, chosen, rejected = ensemble_loss(heads[:half], heads[half:], spans)
    references = [reference_pairwise_loss(ids, heads[..., k], PAD, 1) for k in range(3)]
    torch.testing.assert_close(loss, torch.stack([ref[0] for ref in references]).mean(), atol=1e-6, rtol=0)
    torch.testing.assert_close(chosen, torch.stack([ref[1] for ref in references], dim=1), atol=0, rtol=0)
    torch.testing.assert_close(rejected, torch.stack([ref[2] for ref in references], dim=1), atol=0, rtol=0)
    weights = bootstrap_weights(1234, 3, range(half))
    weighted, _, _ = ensemble_loss(heads[:half], heads[half:], spans, fields={"bootstrap_weights": weights})
    per_pair = torch.tensor([[reference_pairwise_loss(ids[[i, half + i]], heads[[i, half + i], :, k], PAD, 1)[0]
                              for k in range(3)] for i in range(half)])
    torch.testing.assert_close(weighted, (per_pair * weights).mean(), atol=1e-6, rtol=0)


def test_bootstrap_weights_follow_the_pair_not_the_batch():
    """Poisson(1) per (seed, pair index, head): the same in any batch, any number of heads (head k's column
    stays), another seed draws others; a micro batch cut into sub-batches sums to its loss."""
    weights = bootstrap_weights(7, 4, range(2000))
    assert weights.mean().item() == pytest.approx(1.0, abs=0.05) and (weights == 0).float().mean() > 0.3
    assert torch.equal(bootstrap_weights(7, 4, [5, 1])[0], weights[5])
    assert torch.equal(bootstrap_weights(7, 2, [5]), weights[5:6, :2])
    assert not torch.equal(bootstrap_weights(8, 4, range(50)), weights[:50])
    pairs = IndexedPairs([{"chosen_input_ids": [2, 5, 6], "rejected_input_ids": [2, 7]}] * 3)
    batch = PairCollator(PAD, bootstrap=(7, 4))([pairs[2], pairs[0]])
    assert torch.equal(batch["bootstrap_weights"], weights[[2, 0]])
    ids, mask = rows(count=4)
    heads = torch.randn(ids.size(0), ids.size(1), 4, generator=torch.Generator().manual_seed(1))
    spans = loss_spans(ids[:4], ids[4:], PAD, 1, mask[:4], mask[4:])
    whole, _, _ = ensemble_loss(heads[:4], heads[4:], spans, fields={"bootstrap_weights": weights[:4]})
    parts = [ensemble_loss(heads[p], heads[[4 + i for i in p]], tuple(span[p] for span in spans),
                           fields={"bootstrap_weights": weights[p]})[0] * len(p) / 4 for p in ([0, 3], [1, 2])]
    torch.testing.assert_close(sum(parts), whole, atol=1e-6, rtol=0)


def test_ensemble_forward_shared_prompt_gives_the_plain_loss_and_gradients():
    model = ensemble(3, seed=2).train()
    ids, mask = rows(count=4, seed=5)
    weights = bootstrap_weights(2, 3, range(4))
    results = []
    for share in (False, True):
        model.zero_grad()
        out = model(ids, attention_mask=mask, share_prompt=share, bootstrap_weights=weights)
        out["loss"].backward()
        results.append((out, [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (plain, plain_grads), (shared, shared_grads) = results
    torch.testing.assert_close(shared["loss"], plain["loss"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(shared["chosen_head_scores"], plain["chosen_head_scores"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(plain["chosen_mean_scores"], plain["chosen_head_scores"].mean(1), atol=1e-6, rtol=0)
    for shared_grad, plain_grad in zip(shared_grads, plain_grads):
        torch.testing.assert_close(shared_grad, plain_grad, atol=1e-6, rtol=1e-4)
    assert plain["chosen_head_scores"].shape == (4, 3)


# ---- a trained ensemble: uncertainty, bootstrap, evaluation --------------------------------------

EOT = "<|endoftext|>"


def encode(tokenizer, text):
    return tokenizer(text + EOT)["input_ids"][:64]


def pair_rows(tokenizer, pairs):
    return [{"chosen_input_ids": encode(tokenizer, p["prompt"] + p["chosen"]),
             "rejected_input_ids": encode(tokenizer, p["prompt"] + p["rejected"])} for p in pairs]


def train_ensemble(tiny_opt, tokenizer, bootstrap, steps=100, heads=4):
    """A K-head ensemble on the tiny OPT trained in this process (Adam, 8 learnable pairs a step), then its
    evaluation on 64 unseen pairs like them; the model keeps those statistics, as main.py saves them."""
    from training.evaluation import evaluate
    torch.manual_seed(0)
    model = reward_model(tiny_opt, tokenizer, head=HeadOptions(num_heads=heads, bootstrap=bootstrap, seed=0))
    model.train()
    train = IndexedPairs(pair_rows(tokenizer, learnable_pairs(256, 1)))
    collate = PairCollator(tokenizer.pad_token_id, bootstrap=(0, heads) if bootstrap else None)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = collate([train[i] for i in torch.randint(0, len(train), (8,), generator=order).tolist()])
        loss = model(**batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    collate_eval = PairCollator(tokenizer.pad_token_id)
    eval_rows = pair_rows(tokenizer, learnable_pairs(64, 99))
    loader = [collate_eval(eval_rows[i:i + 16]) for i in range(0, 64, 16)]
    metrics = evaluate(model, loader, "cpu", 64)
    model.reward_stats = {key: metrics[key] for key in ("reward_mean", "reward_std", "head_mean", "head_std")}
    return model.eval(), metrics


@pytest.fixture(scope="module")
def trained(tiny_opt, opt_tokenizer):
    """{bootstrap: (model, eval metrics)} for ensembles trained without and with --head_bootstrap."""
    return {bootstrap: train_ensemble(tiny_opt, opt_tokenizer, bootstrap) for bootstrap in (False, True)}


def shifted_texts(count, seed):
    """Texts unlike the training pairs: strings of digits and brackets the pairs never hold."""
    rng = random.Random(seed)
    return ["".join(rng.choice("0123456789[](){};:'?!") for _ in range(rng.randint(10, 40))) for _ in range(count)]


def test_uncertainty_is_larger_on_texts_unlike_the_training_data(trained, opt_tokenizer):
    from model.scoring import score_fields
    model, _ = trained[False]
    pairs = learnable_pairs(64, 7)
    like = [p["prompt"] + p[side] for p in pairs for side in ("chosen", "rejected")]
    scored = {name: score_fields(model, [encode(opt_tokenizer, text) for text in texts])
              for name, texts in (("like", like), ("unlike", shifted_texts(128, 3)))}
    like_std, unlike_std = (scored[name]["uncertainty"].mean().item() for name in ("like", "unlike"))
    assert unlike_std > 1.5 * like_std, (like_std, unlike_std)


def test_bootstrap_heads_disagree_more_than_unbootstrapped_ones(trained):
    """The heads' spread on the eval pairs, in units of each ensemble's own reward std."""
    spread = {bootstrap: metrics["margin_std"] / metrics["reward_std"] for bootstrap, (_, metrics) in trained.items()}
    assert spread[True] > 1.3 * spread[False], spread


def test_evaluation_reports_each_head_and_the_uncertainty(trained):
    _, metrics = trained[True]
    heads = [metrics[f"accuracy_head_{k}"] for k in range(4)]
    assert all(accuracy > 0.9 for accuracy in heads) and metrics["accuracy"] > 0.9
    assert len(metrics["head_mean"]) == len(metrics["head_std"]) == 4
    assert metrics["margin_std"] > 0 and metrics["score_std"] > 0


def test_std_error_correlation_worked_by_hand():
    """Three pairs, two heads: margins (2, 2) and (1, 3) right, (-1, -3) wrong; per-head score std 1 makes the
    standardised spreads the raw ones x reward_std / 1."""
    from training.ensemble import head_metrics
    chosen = torch.tensor([[2.0, 2.0], [1.0, 3.0], [-1.0, -3.0], [0.0, 0.0]])
    rejected = torch.zeros(4, 2)
    metrics = head_metrics(chosen, rejected, torch.tensor([True, True, True, False]))
    assert metrics["accuracy_head_0"] == pytest.approx(2 / 3) and metrics["accuracy_head_1"] == pytest.approx(2 / 3)
    head_std = torch.cat([chosen[:3], rejected[:3]]).std(0, correction=0)
    spreads = ((chosen[:3] - rejected[:3]) / head_std).std(1, correction=0)
    reward_std = torch.cat([chosen[:3], rejected[:3]]).mean(1).std(correction=0)
    assert metrics["margin_std"] == pytest.approx((spreads * reward_std).mean().item(), rel=1e-6)
    wrong = torch.tensor([0.0, 0.0, 1.0])
    expected = torch.corrcoef(torch.stack([spreads, wrong]))[0, 1].item()
    assert metrics["margin_std_error_corr"] == pytest.approx(expected, rel=1e-6)


# ---- saved ensembles: scoring, serving, export ---------------------------------------------------

@pytest.fixture(scope="module")
def ensemble_dir(trained, opt_tokenizer, tmp_path_factory):
    """The bootstrapped ensemble saved as main.py saves it, with conservative_lambda 0.5."""
    from model.io import save_hf_model
    model, _ = trained[True]
    model.settings = model.settings.replace(head=HeadOptions(num_heads=4, bootstrap=True, conservative_lambda=0.5))
    folder = str(tmp_path_factory.mktemp("ensemble"))
    save_hf_model(model, opt_tokenizer, folder, zero_stage=0)
    return folder


def test_saved_ensemble_scores_mean_uncertainty_and_conservative(ensemble_dir, opt_tokenizer):
    from model.create import load_reward_model
    from model.scoring import score_fields, score_ids
    model = load_reward_model(ensemble_dir)
    assert model.settings.head.conservative_lambda == 0.5 and len(model.reward_stats["head_std"]) == 4
    ids = [encode(opt_tokenizer, text) for text in shifted_texts(3, 1) + ["Human: hi Assistant: thanks, great!"]]
    fields = score_fields(model, ids, heads=True)
    assert torch.equal(fields["reward"], score_ids(model, ids))
    torch.testing.assert_close(fields["reward"], fields["heads"].mean(1), atol=1e-6, rtol=0)
    torch.testing.assert_close(fields["conservative"], fields["reward"] - 0.5 * fields["uncertainty"])
    padded = score_ids(model, ids, pack=False, per_head=True)
    torch.testing.assert_close(padded, fields["heads"], atol=1e-5, rtol=1e-5)


def test_evaluate_score_and_benchmark_write_uncertainty_and_heads(ensemble_dir, tmp_path):
    from evaluation_scripts import benchmark, evaluate
    from tests.fixtures import write_jsonl
    rows = [{"prompt": " Human: hi Assistant:", "chosen": " great, thanks!", "rejected": " awful."},
            {"prompt": " Human: yo Assistant:", "chosen": " kind words", "rejected": " 0123 [4]"}]
    texts = write_jsonl(tmp_path / "texts.jsonl", [{"text": r["prompt"] + r["chosen"]} for r in rows])
    evaluate.main([ensemble_dir, "--score", texts, "--score_output", str(tmp_path / "scores.jsonl"), "--heads"])
    scored = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    for row in scored:
        assert len(row["heads"]) == 4 and row["reward"] == pytest.approx(sum(row["heads"]) / 4, abs=1e-5)
        assert row["conservative"] == pytest.approx(row["reward"] - 0.5 * row["uncertainty"], abs=1e-6)
    report = benchmark.main([ensemble_dir, "--benchmark", "pairs", "--data", write_jsonl(tmp_path / "p.jsonl", rows),
                             "--output_name", "ens", "--no_plots"])
    assert report["uncertainty_mean"] > 0
    lines = [json.loads(line) for line in open(os.path.join(ensemble_dir, "benchmarks", "ens_scores.jsonl"))]
    assert lines[0]["chosen_scores"] == [pytest.approx(scored[0]["reward"], abs=1e-5)]
    assert lines[0]["chosen_uncertainty"] == [pytest.approx(scored[0]["uncertainty"], abs=1e-5)]
    assert "chosen_heads" not in lines[0]


def test_server_returns_the_mean_its_uncertainty_and_heads_on_request(ensemble_dir):
    from fastapi.testclient import TestClient

    from evaluation_scripts.batching import Batcher
    from evaluation_scripts.serve import build_app, load_scorer, parse_args
    args = parse_args([ensemble_dir, "--max_seq_len", "64"])
    scorer = load_scorer(args)
    texts = ["Human: hi Assistant: thanks, great!", "0123 [1] ;;"]
    expected = scorer(scorer.encode([text + EOT for text in texts])[0])
    with TestClient(build_app(scorer, Batcher(scorer, 2048), args)) as client:
        plain = client.post("/score", json={"texts": texts}).json()
        heads = client.post("/score", json={"texts": texts, "heads": True}).json()
        openrlhf = client.post("/get_reward", json={"query": texts}).json()
        verl = client.post("/classify", json={"input": texts, "use_activation": False}).json()
        bad = client.post("/score", json={"texts": texts, "heads": "yes"})
    assert plain["rewards"] == pytest.approx([e["reward"] for e in expected], abs=1e-6)
    assert plain["uncertainty"] == pytest.approx([e["uncertainty"] for e in expected], abs=1e-6)
    assert plain["conservative"] == pytest.approx([e["conservative"] for e in expected], abs=1e-6)
    assert "heads" not in plain and [len(h) for h in heads["heads"]] == [4, 4]
    assert openrlhf["rewards"] == plain["rewards"]
    assert [item["probs"] for item in verl["data"]] == [[r] for r in plain["rewards"]]
    assert bad.status_code == 422 and "'heads' must be true or false" in bad.json()["detail"]


def test_hf_export_scores_the_ensemble_mean_and_keeps_every_head(ensemble_dir, opt_tokenizer, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from model.create import load_reward_model
    from model.export import HEADS_KEY, HEADS_NAME, export_sequence_classification, write_deepspeed_chat_weights
    from model.scoring import score_ids
    out = str(tmp_path / "hf")
    export_sequence_classification(ensemble_dir, out)
    exported = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert exported.config.num_labels == 1 and exported.config.value_heads["outputs"] == 4
    texts = [t + EOT for t in ["Human: hi Assistant: thanks, great!", "Human: a Assistant: awful idea."]
             + shifted_texts(2, 4)]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = exported(**batch).logits.squeeze(-1)
        hidden = exported.model(**batch)[0]
    model = load_reward_model(ensemble_dir)
    ids = [tokenizer(text)["input_ids"] for text in texts]
    torch.testing.assert_close(logits, score_ids(model, ids), atol=1e-5, rtol=0)
    last = batch["attention_mask"].sum(1) - 1
    heads = load_file(os.path.join(out, HEADS_NAME))[HEADS_KEY]
    per_head = hidden[torch.arange(len(texts)), last] @ heads.t()
    torch.testing.assert_close(per_head, score_ids(model, ids, per_head=True), atol=1e-5, rtol=0)
    dschat = torch.load(write_deepspeed_chat_weights(ensemble_dir, str(tmp_path / "dschat")))
    torch.testing.assert_close(dschat["v_head.weight"], heads.mean(0, keepdim=True), atol=1e-7, rtol=0)


# ---- main.py: resume --------------------------------------------------------------------------------

ENSEMBLE_FLAGS = ("--num_heads", "3", "--head_bootstrap", "--conservative_lambda", "1")


def test_sigkill_resume_with_bootstrapped_heads_matches_an_uninterrupted_run(tiny_opt, pair_folder, tmp_path):
    from tests.test_resume import assert_same_model, command
    reference, out = tmp_path / "reference" / "out", tmp_path / "resumed" / "out"
    log = finish(command(tiny_opt, pair_folder, reference, *ENSEMBLE_FLAGS))
    assert "heads acc" in log and '"num_heads": 3' in log
    cmd = command(tiny_opt, pair_folder, out, *ENSEMBLE_FLAGS, "--save_steps", "5")
    code, log = run_until(cmd, "saved checkpoint", 2, signal.SIGKILL)
    assert code == -signal.SIGKILL, log[-2000:]
    log = finish(cmd + ["--resume_from_checkpoint", "auto"])
    assert "resumed from" in log
    assert_same_model(reference, out)
    saved = json.loads((out / "config.json").read_text())["reward_model"]
    assert saved["head"]["num_heads"] == 3 and len(saved["head_std"]) == 3


@pytest.mark.slow
def test_two_rank_zero3_resume_with_heads_matches(tiny_opt, pair_folder, tmp_path):
    from tests.test_resume import assert_same_model, command
    from utils.dist import free_port
    deepspeed = shutil.which("deepspeed") or os.path.join(os.path.dirname(sys.executable), "deepspeed")
    flags = (*ENSEMBLE_FLAGS, "--zero_stage", "3", "--per_device_train_batch_size", "4")
    reference, out = tmp_path / "reference" / "out", tmp_path / "resumed" / "out"

    def launch(folder, *extra):  # each launch its own free port (a killed run's may linger)
        return command(tiny_opt, pair_folder, folder, *flags, *extra,
                       launcher=[deepspeed, "--num_gpus", "2", "--master_port", str(free_port())])
    finish(launch(reference))
    code, log = run_until(launch(out, "--save_steps", "5"), "saved checkpoint", 2, signal.SIGKILL)
    assert code != 0 and not (out / "model.safetensors").exists(), log[-2000:]
    log = finish(launch(out, "--save_steps", "5", "--resume_from_checkpoint", "auto"))
    assert "resumed from" in log
    assert_same_model(reference, out)
