"""Bad input ends in one clear message, exit status 1, no traceback and no model written.

Most cases call main.main() in-process (fast; an unexpected exception fails the test just as a
traceback would); a few run `python main.py` as a process. Run: python -m pytest tests/test_errors.py -q
"""
import json
import os

import pytest

import main
from tests.fixtures import learnable_pairs, run_main, write_jsonl

GOOD = learnable_pairs(40, seed=3)


def data_folder(tmp_path, train_text=None, test_rows=GOOD):
    folder = tmp_path / "data"
    folder.mkdir(exist_ok=True)
    if train_text is None:
        write_jsonl(folder / "train.jsonl", GOOD)
    else:
        (folder / "train.jsonl").write_text(train_text)
    write_jsonl(folder / "test.jsonl", test_rows)
    return str(folder)


def lines(rows):
    return "".join(json.dumps(r) + "\n" for r in rows)


def config_file(tmp_path, text):
    path = tmp_path / "ds.json"
    path.write_text(text)
    return str(path)


def model_without(tiny_opt, tmp_path, *names):
    folder = tmp_path / "model"
    folder.mkdir()
    for name in os.listdir(tiny_opt):
        if name not in names:
            (folder / name).write_bytes(open(os.path.join(tiny_opt, name), "rb").read())
    return str(folder)


# name -> (function(tmp_path, tiny_opt) -> extra argv, text the last line must contain)
CASES = {
    "malformed_jsonl": (lambda t, m: ["--data_path", data_folder(t, lines(GOOD[:2]) + "{oops\n")],
                        "train.jsonl, line 3"),
    "missing_column": (lambda t, m: ["--data_path", data_folder(
        t, lines([{"prompt": "p", "chosen": "c"}]))], "rejected"),
    "null_field": (lambda t, m: ["--data_path", data_folder(
        t, lines(GOOD[:3] + [dict(GOOD[0], chosen=None)]))], "chosen"),
    "non_string_field": (lambda t, m: ["--data_path", data_folder(
        t, lines([dict(GOOD[0], rejected=5)]))], "rejected"),
    "empty_file": (lambda t, m: ["--data_path", data_folder(t, "")], "train.jsonl"),
    "empty_split": (lambda t, m: ["--data_path", data_folder(t), "--data_split", "10,0,0"], "--data_split"),
    "missing_path": (lambda t, m: ["--data_path", str(t / "nope.jsonl")], "nope.jsonl"),
    "unknown_hub_dataset": (lambda t, m: ["--data_path", "someone/unknown-pairs"], "--data_path"),
    "all_pairs_identical": (lambda t, m: ["--data_path", data_folder(
        t, lines([dict(r, rejected=r["chosen"]) for r in GOOD]))], "16 chosen same as rejected"),
    "identical_after_truncation": (lambda t, m: ["--data_path", data_folder(t), "--max_seq_len", "4"],
                                   "16 identical after truncation"),
    "split_not_numbers": (lambda t, m: ["--data_path", data_folder(t), "--data_split", "a,b"], "--data_split"),
    "split_sums_to_zero": (lambda t, m: ["--data_path", data_folder(t), "--data_split", "0,0,0"], "--data_split"),
    "indivisible_global_batch": (lambda t, m: ["--data_path", data_folder(t), "--per_device_train_batch_size",
                                               "5"], "not divisible"),
    "config_not_json": (lambda t, m: ["--data_path", data_folder(t), "--deepspeed_config",
                                      config_file(t, '{\n "train_batch_size": 8,\n}\n')], "line 3"),
    "config_bad_dtype": (lambda t, m: ["--data_path", data_folder(t), "--deepspeed_config", config_file(
        t, json.dumps({"train_batch_size": 8, "train_micro_batch_size_per_gpu": 8,
                       "fp16": {"enabled": "sometimes"}}))], "fp16.enabled"),
    "missing_config_file": (lambda t, m: ["--data_path", data_folder(t), "--deepspeed_config",
                                          str(t / "missing.json")], "missing.json"),
    "seq_len_above_positions": (lambda t, m: ["--data_path", data_folder(t), "--max_seq_len", "100000"],
                                "--max_seq_len 100000"),
    "model_without_config": (lambda t, m: ["--data_path", data_folder(t), "--model_name_or_path",
                                           model_without(m, t, "config.json")], "config.json"),
    "model_without_tokenizer": (lambda t, m: ["--data_path", data_folder(t), "--model_name_or_path",
                                              model_without(m, t, "tokenizer.json", "tokenizer_config.json")],
                                "tokenizer"),
    "margin_without_column": (lambda t, m: ["--data_path", data_folder(t), "--use_margin"], "'margin' column"),
    "offline_hub_model": (lambda t, m: ["--data_path", data_folder(t), "--model_name_or_path",
                                        "facebook/opt-350m"], "use a local folder holding the model"),
    # flags: one validation pass before anything loads
    "negative_lr": (lambda t, m: ["--learning_rate=-1e-5"], "--learning_rate must be a finite number >= 0"),
    "nan_lr": (lambda t, m: ["--learning_rate", "nan"], "--learning_rate must be a finite number >= 0, not nan"),
    "zero_eval_batch": (lambda t, m: ["--per_device_eval_batch_size", "0"], "--per_device_eval_batch_size must be"),
    "dropout_above_1": (lambda t, m: ["--dropout", "1.5"], "--dropout must be a number in [0, 1), not 1.5"),
    "negative_save_steps": (lambda t, m: ["--save_steps", "-2"], "--save_steps must be an integer >= 0"),
    "negative_warmup": (lambda t, m: ["--num_warmup_steps", "-1"], "--num_warmup_steps must be an integer >= 0"),
    "negative_total_limit": (lambda t, m: ["--save_total_limit", "-1"], "--save_total_limit must be"),
    "zero_epochs": (lambda t, m: ["--num_train_epochs", "0"], "--num_train_epochs must be an integer >= 1"),
    "output_dir_is_a_file": (lambda t, m: ["--output_dir", config_file(t, "x")], "it is a file: pass a folder"),
    "empty_chat_template": (lambda t, m: ["--data_path", data_folder(t), "--chat_template", config_file(t, " \n")],
                            "ds.json' is empty: give a file holding a Jinja chat template"),
    "missing_chat_template": (lambda t, m: ["--chat_template", str(t / "nope.jinja")],
                              "nope.jinja': cannot read it (No such file or directory)"),
    "two_problems_at_once": (lambda t, m: ["--dropout", "2", "--eval_iters", "-1"],
                             "2 problems: (1) --eval_iters must be an integer >= 0"),
    # DeepSpeed config values of the wrong type or shape, misspelt keys
    "config_fp16_true": (lambda t, m: ["--deepspeed_config", config_file(t, '{"train_batch_size": 8, "fp16": true}')],
                         'fp16 must be an object such as {"enabled": true}, not True'),
    "config_zero_as_number": (lambda t, m: ["--deepspeed_config", config_file(t, '{"zero_optimization": 2}')],
                              'zero_optimization must be an object such as {"stage": 2}'),
    "config_string_batch": (lambda t, m: ["--deepspeed_config", config_file(t, '{"train_batch_size": "64"}')],
                            "train_batch_size must be an integer >= 1, not '64'"),
    "config_misspelt_section_key": (lambda t, m: ["--deepspeed_config", config_file(
        t, '{"zero_optimization": {"stage": 2, "overlap_com": true}}')], "did you mean 'overlap_comm'?"),
    "config_misspelt_top_key": (lambda t, m: ["--deepspeed_config", config_file(
        t, '{"train_batch_size": 8, "gradient_cliping": 1.0}')], "did you mean 'gradient_clipping'?"),
    "config_text_clipping": (lambda t, m: ["--deepspeed_config", config_file(
        t, '{"train_batch_size": 8, "gradient_clipping": "high"}')], "gradient_clipping must be a finite number"),
}


pytestmark = pytest.mark.usefixtures("clean_dist_env")


def base_args(tiny_opt, tmp_path):
    return ["--model_name_or_path", tiny_opt, "--output_dir", str(tmp_path / "out"),
            "--data_output_path", str(tmp_path / "cache"), "--max_seq_len", "64",
            "--per_device_train_batch_size", "8"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gets_one_clear_error(case, tiny_opt, tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # refused at once, never the network
    make_args, expected = CASES[case]
    argv = base_args(tiny_opt, tmp_path) + make_args(tmp_path, tiny_opt)
    with pytest.raises(SystemExit) as exit_info:
        main.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 1
    assert err and err[-1].startswith("error: ") and expected in err[-1], err[-3:]
    assert not os.path.exists(tmp_path / "out" / "model.safetensors")


def test_finished_model_is_not_overwritten(tiny_opt, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"precious")
    argv = base_args(tiny_opt, tmp_path) + ["--data_path", data_folder(tmp_path)]
    with pytest.raises(SystemExit):
        main.main(argv)
    assert "--overwrite_output_dir" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == b"precious"


@pytest.mark.parametrize("case", ["malformed_jsonl", "indivisible_global_batch", "model_without_config"])
def test_as_a_process_no_traceback(case, tiny_opt, tmp_path):
    make_args, expected = CASES[case]
    result = run_main(base_args(tiny_opt, tmp_path) + make_args(tmp_path, tiny_opt), timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stdout
    assert expected in result.stdout.strip().splitlines()[-1]
