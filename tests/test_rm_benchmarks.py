"""Benchmark figures against hand-worked values, and evaluation_scripts/benchmark.py run on tiny files.

Run: python -m pytest tests/test_rm_benchmarks.py -q    (about 30 s on 2 CPU cores)
"""
import json
import math
import os
import re
import sys

import numpy as np
import pytest

from evaluation_scripts import benchmark
from evaluation_scripts.benchmark_data import Item
from evaluation_scripts import rm_metrics as M
from tests.fixtures import ROOT, child_env, run_command, write_jsonl

# ---------------------------------------------------------------- hand-worked figures


def test_rmbench_levels_from_a_hand_worked_3x3_matrix():
    # item 1: chosen [1, 2, 3] vs rejected [0, 1.5, 2.5] -> M1 = [[1,0,0],[1,1,0],[1,1,1]]
    # item 2: chosen [5, 5, 5] vs rejected [0, 0, 6]     -> M2 = [[1,1,0],[1,1,0],[1,1,0]]
    chosen = np.array([[1, 2, 3], [5, 5, 5]])
    rejected = np.array([[0, 1.5, 2.5], [0, 0, 6]])
    matrix = M.style_matrix(chosen, rejected)
    np.testing.assert_allclose(matrix, [[1, 0.5, 0], [1, 1, 0], [1, 1, 0.5]])
    levels = M.difficulty_levels(matrix)
    assert levels["easy"] == pytest.approx(1.0)  # below the diagonal: chosen in the fancier style
    assert levels["normal"] == pytest.approx(2.5 / 3)
    assert levels["hard"] == pytest.approx(0.5 / 3)  # above it: chosen plainer than rejected
    other = (np.zeros((1, 3)), np.ones((1, 3)))  # every comparison lost
    scores = M.rmbench_scores({"chat": (chosen, rejected), "code": other})
    assert scores["domains"]["chat"]["average"] == pytest.approx((1 + 2.5 / 3 + 0.5 / 3) / 3)
    assert scores["overall"]["hard"] == pytest.approx(0.5 / 6)
    assert scores["overall"]["average"] == pytest.approx(2 / 6)  # mean of the two domain averages


def test_rmbench_pools_safety_subdomains_by_item_and_counts_equal_scores_as_wrong():
    refuse = [Item("safety-refuse", "p", [], [])]
    respond = [Item("safety-response", "p", [], []) for _ in range(3)]
    scored = [(np.full(3, 1.0), np.zeros(3))] + [(np.zeros(3), np.ones(3))] * 2 + [(np.ones(3), np.ones(3))]
    result, tables, _ = benchmark.summarise_rmbench(refuse + respond, scored)
    # 1 of 4 safety items wins everything: pooled 0.25 (not the 0.5 a mean of the two files would give);
    # the tied item (equal scores) does not count as a win.
    assert result["domains"]["safety"]["normal"] == pytest.approx(0.25)
    assert result["subdomains"]["safety-refuse"]["normal"] == 1.0
    assert result["overall"]["domains_missing"] == ["chat", "math", "code"]
    assert "no chat, math, code" in tables[0][2][-1][0]


def test_rewardbench_sections_use_the_authors_prompt_counts():
    sections = M.rewardbench_sections({"math-prm": 1.0, "hep-python": 0.0, "hep-go": 0.0,
                                       "alpacaeval-easy": 1.0, "mt-bench-easy": 0.0})
    assert sections["Reasoning"] == pytest.approx(984 / (984 + 2 * 164))  # math-prm weighs 984, not 447
    assert sections["Chat"] == pytest.approx(100 / 128)
    assert sections["Safety"] is None and sections["Prior Sets"] is None
    assert sections["Overall"] == pytest.approx((sections["Reasoning"] + sections["Chat"]) / 2)
    with_prior = M.rewardbench_sections({"alpacaeval-easy": 1.0, "anthropic_helpful": 0.6, "shp": 0.4})
    assert with_prior["Prior Sets"] == pytest.approx(0.5)
    assert with_prior["Overall"] == pytest.approx((2 * 1.0 + 1 * 0.5) / 3)  # prior sets weigh half a section


def test_best_of_4_credit_splits_a_tie_at_the_top():
    assert M.best_of_n_credit(2.0, [1.0, 0.0, -1.0]) == 1.0
    assert M.best_of_n_credit(1.0, [2.0, 0.0, -1.0]) == 0.0
    assert M.best_of_n_credit(2.0, [2.0, 0.0, -1.0]) == 0.5
    assert M.best_of_n_credit(2.0, [2.0, 2.0, 2.0]) == 0.25


def test_rewardbench2_ties_score_by_hand():
    ref = {1: ([3.0], [1.0, 0.0])}  # one correct answer, gap 3 - 1 = 2
    tied = {1: ([3.0, 2.5], [1.0])}  # two correct answers, spread 0.5, gap 2.5 - 1 = 1.5
    parts = M.ties_score(ref, tied)
    assert parts["tied_accuracy"] == parts["ref_accuracy"] == 1.0
    assert parts["correctness_preferred"] == parts["correctness_preferred_hard"] == 1.0
    assert parts["score"] == pytest.approx(1.0 + 0.01 * math.tanh(1.5 / 0.5 - 1))
    wrong = M.ties_score({1: ([0.0], [1.0])}, {1: ([3.0, 0.0], [1.0])})  # both prompts ranked wrong
    assert wrong["tied_accuracy"] == wrong["ref_accuracy"] == 0.0 and wrong["correctness_preferred"] == 0.0


def test_judgebench_pair_in_both_orders():
    # A judge's verdict on (A, B) and on the swapped pair (B, A), combined by JudgeBench's rule.
    assert M.both_orders_outcome("A>B", "A>B", "B>A") == "correct"  # consistent and right
    assert M.both_orders_outcome("A>B", "B>A", "A>B") == "incorrect"
    assert M.both_orders_outcome("A>B", "A>B", "A>B") == "tie"  # always picks the first shown
    # A reward model scores each answer alone: equal scores say 'B>A' in both orders, which is a tie.
    assert M.reward_verdict(1.0, 1.0) == "B>A"
    assert M.both_orders_outcome("A>B", M.reward_verdict(1.0, 1.0), M.reward_verdict(1.0, 1.0)) == "tie"
    assert M.both_orders_outcome("B>A", M.reward_verdict(0.0, 2.0), M.reward_verdict(2.0, 0.0)) == "correct"


def test_longer_answer_baseline_is_one_when_chosen_is_always_longer():
    bias = M.length_bias([0.0, 1.0, 2.0], [1.0, 0.0, 0.0], [10, 5, 7], [3, 4, 6])
    assert bias["longer_wins_accuracy"] == 1.0
    assert bias["accuracy_chosen_longer"] == pytest.approx(2 / 3) and bias["pairs_chosen_longer"] == 3
    assert bias["accuracy_chosen_shorter"] is None and bias["pairs_chosen_shorter"] == 0


def test_calibration_error_by_hand():
    third = math.log(3)  # sigmoid(ln 3) = 0.75
    # Four pairs all won at p = 0.75: observed 1.0 vs 0.75 (and mirrored 0.0 vs 0.25): ECE 0.25.
    assert M.calibration([third] * 4)["ece"] == pytest.approx(0.25)
    # Three won at 0.75 and one lost at 0.75: observed 3/4 = predicted: ECE 0.
    assert M.calibration([third] * 3 + [-third])["ece"] == pytest.approx(0.0, abs=1e-12)
    rows = M.calibration([third] * 4, bins=10)["reliability"]
    assert [r["count"] for r in rows] == [0, 0, 4, 0, 0, 0, 0, 4, 0, 0]  # 0.25 and 0.75, each pair read both ways
    assert rows[7]["observed"] == 1.0 and rows[7]["mean_prediction"] == pytest.approx(0.75)


def test_spearman_uses_average_ranks_for_ties():
    np.testing.assert_allclose(M.average_ranks([3, 1, 3, 2]), [3.5, 1, 3.5, 2])
    assert M.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(math.sqrt(4.5 / 5))
    assert M.spearman([1, 2, 3], [9, 4, 1]) == pytest.approx(-1.0)
    assert M.spearman([1, 1, 1], [1, 2, 3]) is None


# ---------------------------------------------------------------- the script on tiny files


@pytest.fixture(scope="module")
def reward_model(tiny_opt, tmp_path_factory):
    """A reward model folder (random value head, no training) saved as main.py saves one."""
    from evaluation_scripts.random_reward_model import save_random_reward_model
    return save_random_reward_model(tiny_opt, str(tmp_path_factory.mktemp("reward_model")))


def run_benchmark(model, name, *data, extra=()):
    report = benchmark.main([model, "--benchmark", name, "--data", *map(str, data), "--batch_tokens", "128", *extra])
    scores_file = os.path.join(model, "benchmarks", f"{name}_scores.jsonl")
    with open(scores_file) as f:
        rows = [json.loads(line) for line in f]
    with open(os.path.join(model, "benchmarks", f"{name}.json")) as f:
        assert json.load(f)["items"] == report["items"]
    return report, rows


def answers(word, count):
    return [f"{word} answer number {k}" + " with more words" * k for k in range(count)]


def test_rmbench_file_end_to_end(reward_model, tmp_path, capsys):
    rows = [{"id": i, "subset": "s", "prompt": f"Question {i}?", "chosen": answers("good", 3),
             "rejected": answers(f"bad {i}", 3)} for i in range(3)]
    chat = tmp_path / "chat_filtered.json"
    chat.write_text(json.dumps(rows))
    report, scored = run_benchmark(reward_model, "rmbench", chat, write_jsonl(tmp_path / "total.jsonl",
                                   [dict(r, domain="safety-response") for r in rows[:2]]))
    out = capsys.readouterr().out
    assert "| chat |" in out and "| safety |" in out and "Length bias and calibration" in out
    # The same matrix counted with plain loops from the written scores.
    chat_rows = [r for r in scored if r["group"] == "chat"]
    hits = [[sum(r["chosen_scores"][i] > r["rejected_scores"][j] for r in chat_rows) / 3 for j in range(3)]
            for i in range(3)]
    domain = report["scores"]["domains"]["chat"]
    np.testing.assert_allclose(domain["matrix"], hits, atol=1e-6)
    assert domain["hard"] == pytest.approx((hits[0][1] + hits[0][2] + hits[1][2]) / 3)
    assert domain["easy"] == pytest.approx((hits[1][0] + hits[2][0] + hits[2][1]) / 3)
    assert report["pairs"]["pairs"] == 5 * 9 and report["items"] == 5
    assert os.path.exists(os.path.join(reward_model, "benchmarks", "rmbench_reliability.png"))


def test_rewardbench_file_renders_prompts_as_training_does(reward_model, tmp_path):
    from transformers import AutoTokenizer

    from model.reward_model import RewardModel
    from model.scoring import score_texts
    rows = [{"id": i, "prompt": f"Tell me about {i}.", "chosen": f"It is {i}, thanks!", "rejected": "No.",
             "subset": subset} for i, subset in enumerate(["alpacaeval-easy", "math-prm", "hep-go", "shp"])]
    report, scored = run_benchmark(reward_model, "rewardbench", write_jsonl(tmp_path / "rb.jsonl", rows))
    assert report["prompt_format"] == "human_assistant"
    model = RewardModel.from_pretrained(reward_model)
    tokenizer = AutoTokenizer.from_pretrained(reward_model)
    texts = [f" Human: {r['prompt']} Assistant: {r['chosen']}<|endoftext|>" for r in rows]
    expected = score_texts(model, tokenizer, texts, 512).tolist()
    assert [s["chosen_scores"][0] for s in scored] == pytest.approx(expected, abs=1e-5)
    subsets = report["scores"]["subsets"]
    wins = {s["group"]: float(s["chosen_scores"][0] > s["rejected_scores"][0]) for s in scored}
    assert {k: v["accuracy"] for k, v in subsets.items()} == wins
    reasoning = (984 * wins["math-prm"] + 164 * wins["hep-go"]) / (984 + 164)
    assert report["scores"]["sections"]["Reasoning"] == pytest.approx(reasoning)


def test_rewardbench2_file_with_ties_subset(reward_model, tmp_path, capsys):
    rows = [{"id": str(i), "prompt": f"Fact {i}?", "chosen": [f"Right {i}."], "rejected": answers("wrong", 3),
             "subset": "Factuality"} for i in range(4)]
    rows += [{"id": "ref:7", "prompt": "Name a colour.", "chosen": ["Red."], "rejected": ["Seven.", "A dog."],
              "subset": "Ties"},
             {"id": "tied:7", "prompt": "Name colours.", "chosen": ["Red.", "Blue."], "rejected": ["Seven."],
              "subset": "Ties"}]
    report, scored = run_benchmark(reward_model, "rewardbench2", write_jsonl(tmp_path / "rb2.jsonl", rows))
    factual = [s for s in scored if s["group"] == "Factuality"]
    credit = [M.best_of_n_credit(s["chosen_scores"][0], s["rejected_scores"]) for s in factual]
    assert report["scores"]["subsets"]["Factuality"]["score"] == pytest.approx(np.mean(credit))
    ties = report["scores"]["subsets"]["Ties"]
    assert 0 <= ties["score"] <= 1.01 and ties["items"] == 2
    assert report["scores"]["overall"] == pytest.approx((np.mean(credit) + ties["score"]) / 2)
    assert "Overall (mean of subsets)" in capsys.readouterr().out


def test_judgebench_file_both_orders(reward_model, tmp_path):
    rows = [{"pair_id": str(i), "source": source, "question": f"Q{i}", "response_A": f"answer A {i}",
             "response_B": f"the answer B {i}" * (i + 1), "label": "A>B" if i % 2 else "B>A"}
            for i, source in enumerate(["mmlu-pro-law", "mmlu-pro-math", "livebench-math", "livecodebench"])]
    rows.append(dict(rows[0], pair_id="same", response_A="identical", response_B="identical"))  # a tie
    report, scored = run_benchmark(reward_model, "judgebench", write_jsonl(tmp_path / "jb.jsonl", rows))
    figures = report["scores"]
    strict = [s["chosen_scores"][0] > s["rejected_scores"][0] for s in scored]
    assert figures["Overall"]["accuracy"] == pytest.approx(np.mean(strict))
    assert figures["Overall"]["ties"] == 1 and report["pairs"]["ties"] == 1
    # Single game: a tie gives 'B>A', and the tied pair's label is 'B>A'.
    assert figures["Overall"]["single_game_accuracy"] == pytest.approx((sum(strict) + 1) / 5)
    assert figures["mmlu-pro"]["pairs"] == 3 and figures["source:mmlu-pro-law"]["pairs"] == 2


def test_pairs_file_counts_ties_apart(reward_model, tmp_path):
    rows = [{"prompt": " Human: hi Assistant:", "chosen": " great, thanks!", "rejected": " awful."},
            {"prompt": " Human: hi Assistant:", "chosen": " same", "rejected": " same"},
            {"chosen": "\n\nHuman: yo\n\nAssistant: kind words", "rejected": "\n\nHuman: yo\n\nAssistant: rude"}]
    report = benchmark.main([reward_model, "--benchmark", "pairs", "--data", write_jsonl(tmp_path / "t.jsonl", rows),
                             "--output_name", "eval_pairs", "--no_plots"])
    overall = report["scores"]["overall"]
    assert report["prompt_format"] == "raw" and overall["ties"] == 1 and overall["pairs"] == 3
    assert overall["correct"] + overall["wrong"] == 2
    assert os.path.exists(os.path.join(reward_model, "benchmarks", "eval_pairs.json"))
    assert not os.path.exists(os.path.join(reward_model, "benchmarks", "eval_pairs.png"))


def test_a_rerun_replaces_every_output_of_the_previous_one(reward_model, tmp_path):
    """--no_plots after a run with plots: the old PNGs go with the old figures; other runs' files stay."""
    rows = [{"prompt": " Human: hi Assistant:", "chosen": " great, thanks!", "rejected": " awful."}] * 2
    data = write_jsonl(tmp_path / "t.jsonl", rows)
    folder = os.path.join(reward_model, "benchmarks")
    benchmark.main([reward_model, "--benchmark", "pairs", "--data", data, "--output_name", "rerun"])
    benchmark.main([reward_model, "--benchmark", "pairs", "--data", data, "--output_name", "other", "--no_plots"])
    assert {"rerun.png", "rerun_reliability.png", "rerun.json"} <= set(os.listdir(folder))
    first = open(os.path.join(folder, "rerun.json")).read()
    benchmark.main([reward_model, "--benchmark", "pairs", "--data", data, "--output_name", "rerun", "--no_plots",
                    "--limit", "1"])
    names = set(os.listdir(folder))
    assert {"rerun.json", "rerun_scores.jsonl", "other.json", "other_scores.jsonl"} <= names
    assert not names & {"rerun.png", "rerun_reliability.png"} and not [n for n in names if n.startswith(".")]
    assert json.load(open(os.path.join(folder, "rerun.json")))["items"] == 1 != json.loads(first)["items"]


def test_batched_scores_match_score_texts_when_cut(reward_model):
    from transformers import AutoTokenizer

    from model.reward_model import RewardModel
    from model.scoring import score_all, score_texts
    model = RewardModel.from_pretrained(reward_model)
    tokenizer = AutoTokenizer.from_pretrained(reward_model)
    texts = [" Human: hi Assistant: great" + " and kind" * k + "<|endoftext|>" for k in (0, 3, 30)]
    ids = [row[:24] for row in tokenizer(texts)["input_ids"]]
    got = score_all(model, ids, batch_tokens=48).numpy()
    np.testing.assert_allclose(got, score_texts(model, tokenizer, texts, 24).numpy(), atol=1e-5)


# ---------------------------------------------------------------- bad input: one line naming file, row and fix


def expect_error(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(argv)
    assert exit_info.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


CONVERSATION = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
ROWS = {  # a row of each schema, and main.py's conversation layout, which no benchmark reads
    "rmbench": {"id": 1, "domain": "chat", "prompt": "p", "chosen": ["a", "b", "c"], "rejected": ["d", "e", "f"]},
    "rewardbench": {"id": 1, "prompt": "p", "chosen": "a", "rejected": "b", "subset": "alpacaeval-easy"},
    "rewardbench2": {"id": 1, "prompt": "p", "chosen": ["a"], "rejected": ["b", "c", "d"], "subset": "Math"},
    "judgebench": {"question": "q", "response_A": "a", "response_B": "b", "label": "A>B", "source": "x"},
    "conversations": {"chosen": CONVERSATION, "rejected": CONVERSATION[:1] + [{"role": "assistant", "content": "No"}]},
}


@pytest.mark.parametrize("layout", sorted(ROWS))
def test_a_row_of_another_benchmark_names_one_that_reads_it(layout, tmp_path):
    """Every wrong --benchmark: the benchmark the error suggests loads the file; none is suggested for
    conversations (evaluate.py is)."""
    from types import SimpleNamespace

    from utils.errors import UserError
    data = write_jsonl(tmp_path / "rows.jsonl", [ROWS[layout]])
    for name in benchmark.BENCHMARKS:
        args = SimpleNamespace(data=[data], limit=0, benchmark=name)
        try:
            benchmark.load_items(args)
            continue
        except UserError as error:
            message = str(error)
        suggested = re.findall(r"This row fits --benchmark (\w+)\.", message)
        if layout == "conversations":
            assert not suggested and "evaluate.py --data_path" in message, message
        else:
            assert suggested, message
            assert benchmark.load_items(SimpleNamespace(data=[data], limit=0, benchmark=suggested[0]))


def test_wrong_schema_missing_field_and_empty_file(reward_model, tmp_path, capsys):
    judge = write_jsonl(tmp_path / "jb.jsonl", [{"question": "q", "response_A": "a", "response_B": "b",
                                                 "label": "A>B", "source": "x"}])
    line = expect_error(capsys, [reward_model, "--benchmark", "rmbench", "--data", judge])
    assert "jb.jsonl, line 1" in line and "This row fits --benchmark judgebench." in line
    pairs = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "p", "chosen": "c", "rejected": "r"},
                                               {"prompt": "p", "chosen": "c"}])
    line = expect_error(capsys, [reward_model, "--benchmark", "pairs", "--data", pairs])
    assert "p.jsonl, line 2: field 'rejected' is missing" in line
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert "holds no rows" in expect_error(capsys, [reward_model, "--benchmark", "pairs", "--data", str(empty)])
    bad_label = write_jsonl(tmp_path / "l.jsonl", [{"question": "q", "response_A": "a", "response_B": "b",
                                                    "label": "A=B", "source": "x"}])
    assert "'A>B' or 'B>A'" in expect_error(capsys, [reward_model, "--benchmark", "judgebench", "--data", bad_label])
    good = write_jsonl(tmp_path / "good.jsonl", [{"prompt": "p", "chosen": "c", "rejected": "r"}])
    line = expect_error(capsys, [reward_model, "--benchmark", "pairs", "--data", good, "--prompt_format",
                                 "chat_template"])
    assert "no chat template" in line


def test_run_eval_sh_dispatches_and_refuses_a_plain_language_model(tiny_opt, tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "p", "chosen": "c", "rejected": "r"}])
    result = run_command(["bash", os.path.join(ROOT, "evaluation_scripts", "run_eval.sh"), tiny_opt,
                          "--benchmark", "pairs", "--data", data], timeout=120,
                         env=dict(child_env(), PYTHON=sys.executable))
    assert result.returncode == 1 and "Traceback" not in result.stdout
    assert result.stdout.strip().splitlines()[-1].startswith("error: ")
    assert "is not a reward model" in result.stdout
