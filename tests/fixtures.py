"""Test helpers: learnable preference pairs, JSONL writing, running main.py as a process."""
import hashlib
import json
import os
import random
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOOD = ["great", "wonderful", "helpful", "kind", "thanks", "excellent", "friendly"]
BAD = ["awful", "terrible", "hate", "rude", "lazy", "idea", "not"]
DIST_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_SIZE",
            "CROSS_RANK", "CROSS_SIZE")
FILLER = ["the", "it", "is", "that", "was", "and", "this", "I", "a", "of"]


def learnable_pairs(count, seed):
    """Chosen answers use friendly words, rejected ones rude words; lengths vary independently."""
    rng = random.Random(seed)

    def answer(words):
        return " " + " ".join(rng.choice(words if rng.random() < 0.5 else FILLER)
                              for _ in range(rng.randint(3, 12))) + " " + rng.choice(words) + "."
    return [{"prompt": f" Human: Tell me about item {rng.randint(0, 999)}. Assistant:",
             "chosen": answer(GOOD), "rejected": answer(BAD)} for _ in range(count)]


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return str(path)


def child_env():
    """Environment for a child main.py: no inherited rank variables (in-process tests may have set
    them), one thread per rank (2 cores: more threads thrash), compiled ops cached per venv."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(os.path.expanduser("~/.cache/torch_extensions"),
                                                        hashlib.sha1(sys.prefix.encode()).hexdigest()[:12]))
    return env


def run_main(args, launcher=None, timeout=600):
    """Run main.py as a user would; returns the CompletedProcess (stdout+stderr in .stdout)."""
    command = (launcher or [sys.executable]) + [os.path.join(ROOT, "main.py")] + [str(a) for a in args]
    # In-process tests may have set these in this process: a child must pick its own.
    env = child_env()
    return subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout, env=env)


def step_losses(log):
    """The loss of every `step N | loss X` line main.py printed."""
    return [float(x) for x in re.findall(r"^step \d+ \| loss ([0-9.]+)", log, re.M)]


def eval_accuracies(log):
    """The accuracy of every `eval (...) | acc X` line main.py printed."""
    return [float(x) for x in re.findall(r"^eval \(.*?\) \| acc ([0-9.]+)", log, re.M)]


def check_saved_model(output_dir, data_folder, expected_accuracy):
    """Reload the saved model and score the eval split: same accuracy as main.py reported."""
    import pytest
    import torch
    from transformers import AutoTokenizer

    from data import PairCollator, build_pair_datasets
    from model.reward_model import RewardModel
    from training.evaluation import evaluate
    for name in ("config.json", "model.safetensors", "tokenizer.json", "ds_config.json", "train_results.json"):
        assert os.path.exists(os.path.join(output_dir, name)), name
    model = RewardModel.from_pretrained(output_dir)
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    _, eval_set = build_pair_datasets([data_folder], "0,10,0", 1234, tokenizer, 64,
                                      os.path.join(output_dir, "cache"), model.end_of_conversation_token,
                                      model.num_padding_at_beginning)
    loader = torch.utils.data.DataLoader(eval_set, batch_size=32, collate_fn=PairCollator(tokenizer.pad_token_id))
    metrics = evaluate(model, loader, torch.device("cpu"), len(eval_set))
    assert metrics["accuracy"] == pytest.approx(expected_accuracy, abs=1.5 / len(eval_set))


def start(cmd):
    """Start a command in its own process group (so a signal reaches the launcher and every rank)."""
    return subprocess.Popen(cmd, cwd=ROOT, env=child_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)


def run_until(cmd, marker, count, sig):
    """Start cmd, send `sig` to its whole process group once `marker` has appeared `count` times."""
    process, seen, log = start(cmd), 0, []
    for line in process.stdout:
        log.append(line)
        seen += marker in line
        if seen == count:
            os.killpg(process.pid, sig)
            break
    log.extend(process.stdout)
    return process.wait(timeout=300), "".join(log)


def finish(cmd):
    process = start(cmd)
    log = process.stdout.read()
    assert process.wait(timeout=600) == 0, log[-3000:]
    return log


def reward_model(base, tokenizer, num_padding_at_beginning=1, **settings):
    """`build_reward_model` on the base model folder `base` with `tokenizer`'s PAD; keywords are Settings
    fields (LossOptions' go into `loss`)."""
    from model.create import build_reward_model
    from utils.settings import LossOptions, Settings
    loss = LossOptions(**{key: settings.pop(key) for key in list(settings) if key in LossOptions.__dataclass_fields__})
    return build_reward_model(Settings(model_name_or_path=base, num_padding_at_beginning=num_padding_at_beginning,
                                       pad_token_id=tokenizer.pad_token_id, loss=loss, **settings), tokenizer)


def row_settings(pad_id, num_padding_at_beginning=1, **settings):
    """Settings for a RewardModel built around an in-memory base model (no folder)."""
    from utils.settings import LossOptions, Settings
    loss = LossOptions(**{key: settings.pop(key) for key in list(settings) if key in LossOptions.__dataclass_fields__})
    return Settings(model_name_or_path="", num_padding_at_beginning=num_padding_at_beginning, pad_token_id=pad_id,
                    loss=loss, **settings)
