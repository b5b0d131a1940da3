"""--objective regression: rated single responses, attribute heads, their metrics, export and serving.

Run: python -m pytest tests/test_regression.py -q
"""
import gzip
import json
import math
import os

import numpy as np
import pytest
import torch

from data.ratings import RatedCollator, build_rated_datasets, read_rated_file
from data.synthetic import MARKERS, RATED_ATTRIBUTES, make_rated_splits
from evaluation_scripts.rm_metrics import attribute_metrics, grouped_pair_accuracy, pearson, spearman
from model.reward_model import regression_loss
from tests.fixtures import reward_model, run_main, train_log, write_jsonl, write_rows
from utils.errors import UserError
from utils.settings import REGRESSION, HeadOptions
from utils.spans import END_OF_CONVERSATION

HELPSTEER2_ROW = {"prompt": "What is 2+2?", "response": " 4.", "helpfulness": 3, "correctness": 4, "coherence": 4,
                  "complexity": 1, "verbosity": 0}


# ---------------------------------------------------------------- data

def test_helpsteer2_rows_read_with_missing_ratings_masked(tmp_path):
    rows = [HELPSTEER2_ROW, dict(HELPSTEER2_ROW, correctness=None), {"prompt": "p", "response": " r", "helpfulness": 2}]
    read = read_rated_file(write_jsonl(tmp_path / "train.jsonl", rows), ["helpfulness", "correctness"])
    assert [r["labels"] for r in read] == [[3.0, 4.0], [3.0, 0.0], [2.0, 0.0]]
    assert [r["label_mask"] for r in read] == [[True, True], [True, False], [True, False]]


def test_csv_blank_cells_are_masked_and_text_is_refused_with_its_line(tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("prompt,response,helpfulness,verbosity\nhi, there,3,\nyo, you,,1.5\n")
    read = read_rated_file(str(good), ["helpfulness", "verbosity"])
    assert [r["label_mask"] for r in read] == [[True, False], [False, True]]
    assert read[1]["labels"] == [0.0, 1.5]
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,response,helpfulness\nhi, there,3\nyo, you,great\n")
    with pytest.raises(UserError, match=r"bad.csv, line 3: column 'helpfulness' holds 'great', not a number"):
        read_rated_file(str(bad), ["helpfulness"])


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
def test_an_attribute_absent_from_a_file_is_one_error_naming_file_and_column(tmp_path, suffix):
    path = write_rows(tmp_path / f"train{suffix}", [HELPSTEER2_ROW])
    with pytest.raises(UserError) as error:
        read_rated_file(path, ["helpfulness", "safety"])
    assert f"train{suffix}: missing column(s) safety (safety named by main.py --attributes)" in str(error.value)
    assert "helpfulness" in str(error.value)  # the columns found


def test_rated_datasets_tokenise_like_pairs_and_group_by_prompt(opt_tokenizer, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    train = [dict(HELPSTEER2_ROW, response=f" answer {i}", helpfulness=i % 5) for i in range(20)]
    test = [dict(HELPSTEER2_ROW, prompt=f"Q{i // 2}?", response=f" a{i}", helpfulness=i % 5) for i in range(6)]
    test.append(dict(HELPSTEER2_ROW, helpfulness=None))  # no rating of the attribute asked for: dropped
    write_jsonl(folder / "train.jsonl", train)
    with gzip.open(folder / "validation.jsonl.gz", "wt") as f:  # as HelpSteer2 ships it
        f.writelines(json.dumps(row) + "\n" for row in test)
    train_set, eval_set = build_rated_datasets([str(folder)], "0,1,0", 1234, opt_tokenizer, 64, str(tmp_path / "c"),
                                               ["helpfulness"], END_OF_CONVERSATION, 1, "auto")
    assert (len(train_set), len(eval_set)) == (20, 6)
    by_text = {tuple(r["input_ids"]): r for r in eval_set}
    for row in test[:6]:
        ids = opt_tokenizer(row["prompt"] + row["response"] + END_OF_CONVERSATION)["input_ids"]
        assert by_text[tuple(ids)]["labels"] == [float(row["helpfulness"])]
    groups = {}
    for row in test[:6]:
        ids = tuple(opt_tokenizer(row["prompt"] + row["response"] + END_OF_CONVERSATION)["input_ids"])
        groups.setdefault(row["prompt"], set()).add(by_text[ids]["group"])
    assert all(len(g) == 1 for g in groups.values()) and len(set.union(*groups.values())) == 3


def test_group_by_length_batches_rated_rows_of_similar_length(opt_tokenizer, tmp_path):
    from data.sampler import pair_lengths, train_sampler
    rows = [dict(HELPSTEER2_ROW, response=" the" * (1 + (7 * i) % 40)) for i in range(64)]
    train_set, _ = build_rated_datasets([write_jsonl(tmp_path / "rated.jsonl", rows)], "0,1,0", 1234, opt_tokenizer,
                                        64, str(tmp_path / "c"), ["helpfulness"], END_OF_CONVERSATION, 1, "auto")
    lengths = pair_lengths(train_set)
    assert lengths.tolist() == [len(row["input_ids"]) for row in train_set]
    order = list(train_sampler(train_set, 8, group_by_length=True, seed=1, num_replicas=1, rank=0))
    assert sorted(order) == list(range(len(train_set)))
    spreads = [np.ptp(lengths[order[i:i + 8]]) for i in range(0, len(order), 8)]
    assert max(spreads) < np.ptp(lengths) / 2  # a random batch spans nearly the whole range


def test_collator_pads_rows_and_stacks_labels():
    batch = RatedCollator(pad_token_id=1, pad_to_multiple_of=4)(
        [{"input_ids": [2, 5, 6], "labels": [1.0, 0.0], "label_mask": [True, False]},
         {"input_ids": [2], "labels": [2.0, 3.0], "label_mask": [True, True]}])
    assert batch["input_ids"].tolist() == [[2, 5, 6, 1], [2, 1, 1, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert batch["labels"].dtype == torch.float32 and batch["labels"].shape == (2, 2)
    assert batch["label_mask"].dtype == torch.bool and batch["label_mask"].tolist() == [[True, False], [True, True]]


def test_synthetic_ratings_are_the_marker_counts():
    train, test = make_rated_splits(100)
    assert len(train) + len(test) == 100 and train[0]["prompt"] == train[1]["prompt"]
    for row in train + test:
        words = row["response"].strip(" .").split()
        for name in RATED_ATTRIBUTES:
            assert row[name] is None or row[name] == words.count(MARKERS[name])


# ---------------------------------------------------------------- metrics

def test_attribute_metrics_by_hand():
    predictions = np.array([[1.0, 0.0], [2.0, 9.0], [4.0, 1.0]])
    labels = np.array([[1.0, 0.0], [3.0, 5.0], [3.0, 2.0]])
    mask = np.array([[True, True], [True, False], [True, True]])
    metrics = attribute_metrics(predictions, labels, mask, ["a", "b"])
    assert metrics["a"]["rmse"] == pytest.approx(math.sqrt((0 + 1 + 1) / 3))
    assert metrics["b"]["rmse"] == pytest.approx(math.sqrt((0 + 1) / 2)) and metrics["b"]["count"] == 2
    assert metrics["a"]["pearson"] == pytest.approx(np.corrcoef([1, 2, 4], [1, 3, 3])[0, 1])
    assert metrics["a"]["spearman"] == pytest.approx(np.corrcoef([1, 2, 3], [1, 2.5, 2.5])[0, 1])
    assert pearson([1, 1], [1, 2]) is None and spearman([3, 1, 2], [30, 10, 20]) == pytest.approx(1.0)


def test_grouped_pair_accuracy_counts_only_pairs_of_a_prompt_rated_apart():
    rewards = [0.9, 0.1, 0.5, 0.5, 0.2, 0.3, 0.7]
    labels = [4.0, 1.0, 2.0, 3.0, 2.0, 2.0, float("nan")]
    groups = [0, 0, 1, 1, 2, 2, 0]
    # group 0: right (row 6 has no label reward); group 1: equal rewards, wrong; group 2: rated alike, no pair
    assert grouped_pair_accuracy(rewards, labels, groups) == {"pair_accuracy": 0.5, "num_pairs": 2}


# ---------------------------------------------------------------- the loss and the model

def test_regression_loss_by_hand():
    scores = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    labels = torch.tensor([[0.0, 2.0], [5.0, 100.0]])
    mask = torch.tensor([[True, True], [True, False]])
    loss = regression_loss(scores, labels, mask)
    assert loss.item() == pytest.approx((1.0 + 0.0 + 4.0) / 3)  # (1-0)^2, (2-2)^2, (3-5)^2; 100 is masked
    loss.backward()
    assert scores.grad[1, 1] == 0  # a masked rating pulls nothing
    assert scores.grad.flatten().tolist() == pytest.approx([2 / 3, 0.0, -4 / 3, 0.0])  # 2 (s - y) / 3
    none = regression_loss(scores, labels, torch.zeros_like(mask))
    assert none.item() == 0.0 and none.requires_grad


def regression_model(tiny_opt, tokenizer, attributes=("helpfulness", "verbosity"), weights=(0.75, 0.25)):
    head = HeadOptions(objective=REGRESSION, attributes=attributes, attribute_weights=weights, seed=3)
    return reward_model(tiny_opt, tokenizer, head=head).eval()


def test_rated_forward_reads_each_row_at_its_end_token(tiny_opt, opt_tokenizer):
    model = regression_model(tiny_opt, opt_tokenizer)
    assert model.v_head.weight.shape == (2, 32)
    texts = [" Human: hi Assistant: great, thanks!" + END_OF_CONVERSATION, " no" + END_OF_CONVERSATION]
    rows = [{"input_ids": opt_tokenizer(t)["input_ids"], "labels": [1.0, 2.0], "label_mask": [True, True]}
            for t in texts]
    batch = RatedCollator(opt_tokenizer.pad_token_id)(rows)
    with torch.no_grad():
        out = model(**batch)
        for i, row in enumerate(rows):  # alone, unpadded: the score is the last token's
            alone = model.head_outputs(torch.tensor([row["input_ids"]]), None)[0, -1]
            assert out["attribute_scores"][i].tolist() == pytest.approx(alone.tolist(), abs=1e-5)
    assert out["rewards"].tolist() == pytest.approx((out["attribute_scores"] @ torch.tensor([0.75, 0.25])).tolist())
    assert out["loss"].item() == pytest.approx(((out["attribute_scores"] - batch["labels"]) ** 2).mean().item())


# ---------------------------------------------------------------- main.py

TRAIN_FLAGS = ["--objective", "regression", "--attributes", ",".join(RATED_ATTRIBUTES), "--data_split", "0,1,0",
               "--max_seq_len", "64", "--per_device_train_batch_size", "16", "--gradient_accumulation_steps", "1",
               "--per_device_eval_batch_size", "64", "--learning_rate", "2e-3", "--lr_scheduler_type", "constant",
               "--dropout", "0.0", "--dtype", "fp32"]


@pytest.fixture(scope="module")
def rated_run(tiny_opt, tmp_path_factory):
    """main.py trained 3 epochs (~340 steps, ~10 s) on synthetic/rated:2000: (output folder, its log)."""
    out = tmp_path_factory.mktemp("rated") / "model"
    result = run_main(["--model_name_or_path", tiny_opt, "--data_path", "synthetic/rated:2000", "--output_dir", out,
                       "--data_output_path", out.parent / "cache", "--num_train_epochs", "3", *TRAIN_FLAGS])
    assert result.returncode == 0, result.stdout[-3000:]
    return out, result.stdout


def test_attributes_that_are_functions_of_the_text_are_recovered(rated_run):
    out, log = rated_run
    results = json.loads((out / "train_results.json").read_text())
    assert results["num_rows"] == 200  # the held-out split: rows the model never trained on
    for name in RATED_ATTRIBUTES:
        assert results[f"{name}/pearson"] >= 0.9, (name, results)
        assert results[f"{name}/rmse"] < 0.6 and results[f"{name}/count"] >= 180  # ~5% of ratings are missing
    assert results["pair_accuracy"] >= 0.9 and results["num_pairs"] >= 40
    before = [e for e in train_log(out, "rewards") if e["step"] == 0][0]
    assert before["pearson"] < 0.5  # it was learnt, not there from the start
    assert "eval (epoch 3) | rmse" in log and "helpfulness rmse" in log and "pair acc" in log
    head = json.loads((out / "config.json").read_text())["reward_model"]["head"]
    assert head["attributes"] == list(RATED_ATTRIBUTES) and head["attribute_weights"] == [0.2] * 5


@pytest.mark.usefixtures("clean_dist_env")
@pytest.mark.parametrize("flags, expected", [
    (["--objective", "regression"], "--objective regression needs --attributes"),
    (["--objective", "regression", "--attributes", "a,b", "--attribute_weights", "1"],
     "--attribute_weights gives 1 weight(s) for 2 --attributes (a,b)"),
    (["--attributes", "a,b"], "--attributes needs --objective regression"),
    (["--objective", "regression", "--attributes", "a,a"], "names a column twice"),
    (["--objective", "regression", "--attributes", "a", "--use_margin"], "--use_margin does not apply"),
    (["--objective", "regression", "--attributes", "a", "--num_heads", "2"], "--num_heads does not apply"),
    ([], "--data_path synthetic/rated:100 holds rated single responses, not pairs"),
])
def test_flags_are_checked_together_before_anything_loads(flags, expected, tiny_opt, tmp_path, capsys):
    import main
    argv = ["--model_name_or_path", tiny_opt, "--output_dir", str(tmp_path / "out"), "--data_path",
            "synthetic/rated:100", "--data_output_path", str(tmp_path / "cache"), *flags]
    with pytest.raises(SystemExit) as exit_info:
        main.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 1 and err[-1].startswith("error: ") and expected in err[-1], err[-3:]
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


@pytest.mark.usefixtures("clean_dist_env")
def test_a_missing_attribute_column_stops_main_before_the_model_with_nothing_written(tiny_opt, tmp_path, capsys):
    import main
    folder = tmp_path / "helpsteer2"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [HELPSTEER2_ROW] * 8)
    write_jsonl(folder / "validation.jsonl", [{k: v for k, v in HELPSTEER2_ROW.items() if k != "verbosity"}] * 2)
    argv = ["--model_name_or_path", tiny_opt, "--output_dir", str(tmp_path / "out"), "--data_path", str(folder),
            "--data_output_path", str(tmp_path / "cache"), "--objective", "regression", "--attributes",
            "helpfulness,verbosity"]
    with pytest.raises(SystemExit) as exit_info:
        main.main(argv)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 1
    expected = f"{folder / 'validation.jsonl'}: missing column(s) verbosity (verbosity named by main.py --attributes)"
    assert expected in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_evaluate_py_reproduces_the_training_metrics(rated_run):
    from evaluation_scripts import evaluate
    out, _ = rated_run
    evaluate.main([str(out), "--data_path", "synthetic/rated:2000", "--no_plots"])
    reloaded = json.loads((out / "eval_results.json").read_text())
    trained = json.loads((out / "train_results.json").read_text())
    assert reloaded["num_rows"] == trained["num_rows"] and reloaded["num_pairs"] == trained["num_pairs"]
    for key in ("rmse", "pearson", "spearman", "pair_accuracy", "reward_mean", "helpfulness/rmse"):
        assert reloaded[key] == pytest.approx(trained[key], abs=1e-5), key


# ---------------------------------------------------------------- export and serving

SCORED = [(" Human: Rate item 0001. Assistant:", " helpful the the the excellent excellent the the friendly the the "
           "the the the the the wonderful wonderful wonderful the."),
          (" Human: hi Assistant:", " capital."), (" Human: Rate item 7. Assistant:", " the the helpful.")]


def attribute_outputs(model_dir, texts):
    """(N, K) attribute outputs of our RewardModel for each text alone, at its end token."""
    from transformers import AutoTokenizer

    from model.reward_model import RewardModel
    model = RewardModel.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with torch.no_grad():
        return torch.stack([model.head_outputs(torch.tensor([tokenizer(t)["input_ids"]]), None)[0, -1]
                            for t in texts])


def test_export_has_one_logit_per_attribute_equal_to_the_model_outputs(rated_run, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from evaluation_scripts.export_hf import main as export_main
    out, _ = rated_run
    export_main([str(out), str(tmp_path / "hf")])
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["id2label"] == {str(k): name for k, name in enumerate(RATED_ATTRIBUTES)}
    assert config["attribute_weights"] == [0.2] * 5 and config["problem_type"] == "regression"
    classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    texts = [p + r + END_OF_CONVERSATION for p, r in SCORED]
    batch = tokenizer(texts, padding=True, return_tensors="pt")  # right-padded: HF pools at the last non-pad
    with torch.no_grad():
        logits = classifier(**batch).logits
    ours = attribute_outputs(out, texts)
    assert logits.shape == (3, 5)
    assert torch.allclose(logits, ours, atol=1e-5), (logits, ours)


def test_score_file_and_server_give_the_attributes_and_one_combined_reward(rated_run, tmp_path):
    import httpx

    from evaluation_scripts import evaluate
    from tests.test_serve import MAX_SEQ_LEN, Server
    out, _ = rated_run
    ours = attribute_outputs(out, [p + r + END_OF_CONVERSATION for p, r in SCORED])
    combined = (ours @ torch.full((5,), 0.2)).tolist()
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": p, "response": r} for p, r in SCORED])
    evaluate.main([str(out), "--score", rows, "--score_output", str(tmp_path / "scored.jsonl")])
    scored = [json.loads(line) for line in (tmp_path / "scored.jsonl").read_text().splitlines()]
    for row, expected, reward in zip(scored, ours.tolist(), combined):
        assert list(row["attributes"]) == list(RATED_ATTRIBUTES)
        assert list(row["attributes"].values()) == pytest.approx(expected, abs=1e-4)
        assert row["reward"] == pytest.approx(reward, abs=1e-4)
    server = Server(str(out), tmp_path)
    try:
        body = {"prompts": [p for p, _ in SCORED], "answers": [r for _, r in SCORED]}
        answer = httpx.post(server.url + "/score", json=body, timeout=60).json()
        texts = [p + r for p, r in SCORED]
        openrlhf = httpx.post(server.url + "/get_reward", json={"query": texts}, timeout=60).json()
        verl = httpx.post(server.url + "/classify", json={"input": texts, "use_activation": False}, timeout=60).json()
        info = httpx.get(server.url + "/info", timeout=60).json()
    finally:
        assert server.stop() == 0, server.log()
    assert MAX_SEQ_LEN >= 64 and answer["rewards"] == pytest.approx(combined, abs=1e-4)
    assert [list(a.values()) for a in answer["attributes"]] == [pytest.approx(o, abs=1e-4) for o in ours.tolist()]
    assert openrlhf["rewards"] == pytest.approx(combined, abs=1e-4)  # one reward per text: the combined one
    assert [d["probs"] for d in verl["data"]] == [[pytest.approx(r, abs=1e-4)] for r in combined]
    assert info["attributes"] == list(RATED_ATTRIBUTES) and info["attribute_weights"] == [0.2] * 5


def test_two_ranks_evaluate_every_row_once(tiny_opt, tmp_path):
    """deepspeed with 2 CPU ranks: the 17 eval rows split 9 + 8 (one row repeated for padding, not counted);
    the gathered metrics equal evaluate.py's in one process."""
    import shutil
    import sys

    from evaluation_scripts import evaluate
    from utils.dist import free_port
    deepspeed = shutil.which("deepspeed") or os.path.join(os.path.dirname(sys.executable), "deepspeed")
    out = tmp_path / "model"
    flags = ["2,4,4" if flag == "0,1,0" else flag for flag in TRAIN_FLAGS]  # 42 eval rows -> 17 in phase 2
    result = run_main(["--model_name_or_path", tiny_opt, "--data_path", "synthetic/rated:420", "--output_dir", out,
                       "--data_output_path", tmp_path / "cache", *flags, "--per_device_train_batch_size", "8",
                       "--per_device_eval_batch_size", "4"],  # the last of a flag given twice counts
                      launcher=[deepspeed, "--num_gpus", "2", "--master_port", str(free_port())])
    assert result.returncode == 0, result.stdout[-3000:]
    trained = json.loads((out / "train_results.json").read_text())
    assert trained["num_rows"] == 17
    evaluate.main([str(out), "--data_path", "synthetic/rated:420", "--no_plots", "--data_split", "2,4,4"])
    reloaded = json.loads((out / "eval_results.json").read_text())
    for key in ("num_rows", "num_pairs", "rmse", "pearson", "pair_accuracy", "reward_mean", "verbosity/rmse"):
        assert reloaded[key] == pytest.approx(trained[key], abs=1e-5), key
