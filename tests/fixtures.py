"""Shared test fixtures: a tiny OPT and a learnable preference data folder, built in temp folders."""
import json
import os
import random
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOOD = ["great", "wonderful", "helpful", "kind", "thanks", "excellent", "friendly"]
BAD = ["awful", "terrible", "hate", "rude", "lazy", "idea", "not"]
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


@pytest.fixture(scope="session")
def tiny_opt(tmp_path_factory):
    from model.tiny import build_tiny_opt
    return build_tiny_opt(str(tmp_path_factory.mktemp("tiny_opt")))


@pytest.fixture(scope="session")
def pair_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairs")
    write_jsonl(folder / "train.jsonl", learnable_pairs(384, seed=1))
    write_jsonl(folder / "test.jsonl", learnable_pairs(96, seed=2))
    return str(folder)


def run_main(args, launcher=None, timeout=600):
    """Run main.py as a user would; returns the CompletedProcess (stdout+stderr in .stdout)."""
    command = (launcher or [sys.executable]) + [os.path.join(ROOT, "main.py")] + [str(a) for a in args]
    return subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)
