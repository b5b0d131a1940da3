"""Test helpers: learnable preference pairs, JSONL writing, running main.py as a process."""
import contextlib
import hashlib
import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

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


def micro_batches(tokenizer):
    """Four collated micro batches of 4 pairs whose lengths differ a lot (a length-aware split cuts each)."""
    from data import PairCollator

    def text(words, answer):
        return tokenizer(" Human: " + "the item " * words + "? Assistant: " + answer)["input_ids"]
    collate = PairCollator(tokenizer.pad_token_id)
    batches = []
    for b in range(4):
        rows = [{"chosen_input_ids": text(words, "great thanks kind"), "rejected_input_ids": text(words, "awful")}
                for words in (2 + b, 40 - 3 * b, 5, 20 + b)]
        batches.append(collate(rows))
    return batches


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return str(path)


def write_rows(path, rows):
    """rows -> .jsonl, .json or .parquet by the suffix; returns the path."""
    path = str(path)
    if path.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.endswith(".jsonl"):
        write_jsonl(path, rows)
    else:
        with open(path, "w") as f:
            json.dump(rows, f)
    return path


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
    return run_command((launcher or [sys.executable]) + [os.path.join(ROOT, "main.py")] + [str(a) for a in args],
                       timeout)


def run_command(cmd, timeout, env=None):
    """Run cmd to its end (at most `timeout` s, see Child); returns the CompletedProcess (stdout+stderr in .stdout)."""
    child = Child(cmd, timeout, env)
    code = child.wait()
    return subprocess.CompletedProcess(child.cmd, code, child.log())


def train_log(output_dir, kind):
    """main.py's OUTPUT_DIR/train_log.jsonl entries of one kind, in order: "train" (one per optimizer step:
    step, loss, lr, pairs_per_s) or "rewards" (one per evaluation: step, accuracy, chosen_mean, ...).
    A resumed run appends to the file of the run it resumes."""
    with open(os.path.join(output_dir, "train_log.jsonl")) as f:
        entries = [json.loads(line) for line in f]
    return [entry for entry in entries if entry["kind"] == kind]


def step_losses(output_dir):
    """The training loss of every optimizer step main.py logged (the global batch's mean, full precision)."""
    return [entry["loss"] for entry in train_log(output_dir, "train")]


def eval_accuracies(output_dir):
    """The accuracy of every evaluation main.py logged: before training (step 0), then each epoch's end."""
    return [entry["accuracy"] for entry in train_log(output_dir, "rewards")]


SAVED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "ds_config.json", "train_results.json",
               "training_args.json")


def reloaded_metrics(output_dir, data_path):
    """The saved model scored as a user scores it: evaluation_scripts/evaluate.py (in this process) reloads
    it and evaluates the eval split with the training run's settings; returns its eval_results.json."""
    from evaluation_scripts import evaluate
    output_dir = str(output_dir)
    for name in SAVED_FILES:
        assert os.path.exists(os.path.join(output_dir, name)), name
    evaluate.main([output_dir, "--data_path", str(data_path), "--no_plots"])
    with open(os.path.join(output_dir, "eval_results.json")) as f:
        return json.load(f)


class Child:
    """A command run in its own process group (a signal reaches a launcher and every rank), its output
    (stdout + stderr) read on a thread so that every wait on it has a deadline: `timeout` s after the start
    the whole group is killed and the test fails with the output so far. The output ends when the last
    process holding it exits, so a dead process ends a wait at once."""

    def __init__(self, cmd, timeout, env=None):
        self.cmd, self.timeout = [str(part) for part in cmd], timeout
        self.deadline = time.monotonic() + timeout
        self.process = subprocess.Popen(self.cmd, cwd=ROOT, env=env or child_env(), text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.output, self.ended, self._lines = [], False, queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        with self.process.stdout:
            for line in self.process.stdout:
                self._lines.put(line)
        self._lines.put(None)

    def __iter__(self):
        """The output's lines as they come, until it ends."""
        try:
            while not self.ended:
                try:
                    line = self._lines.get(timeout=max(0.0, self.deadline - time.monotonic()))
                except queue.Empty:
                    self.fail(f"still running after {self.timeout} s")
                if line is None:
                    self.ended = True
                    return
                self.output.append(line)
                yield line
        except GeneratorExit:  # the caller stopped reading: the process runs on
            raise
        except BaseException:  # a failed deadline, Ctrl-C: no process outlives the test
            self.kill()
            raise

    def wait(self):
        """The exit status, once the output has ended and the process exited (.log() then holds all of it)."""
        for _ in self:
            pass
        try:
            return self.process.wait(timeout=max(1.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.fail(f"closed its output but did not exit within {self.timeout} s")

    def signal(self, signum):
        """Send signum to the whole process group."""
        os.killpg(self.process.pid, signum)

    def kill(self):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)

    def fail(self, why):
        self.kill()
        pytest.fail(f"{' '.join(self.cmd)}\n{why}; its output:\n{self.log()[-5000:]}", pytrace=False)

    def log(self):
        return "".join(self.output)


def run_until(cmd, marker, count, sig, timeout=600):
    """Run cmd, send `sig` to its whole process group once `marker` has appeared in `count` lines.
    Returns (exit status, output)."""
    child, seen = Child(cmd, timeout), 0
    for line in child:
        seen += marker in line
        if seen == count:
            child.signal(sig)
            break
    return child.wait(), child.log()


def finish(cmd, timeout=600):
    """Run cmd, which must succeed; returns its output."""
    child = Child(cmd, timeout)
    assert child.wait() == 0, child.log()[-3000:]
    return child.log()


def reward_model(base, tokenizer, num_padding_at_beginning=1, **settings):
    """`build_reward_model` on the base model folder `base` with `tokenizer`'s PAD; keywords are Settings
    fields (LossOptions' go into `loss`)."""
    from model.create import build_reward_model
    return build_reward_model(row_settings(tokenizer.pad_token_id, num_padding_at_beginning, model_name_or_path=base,
                                           **settings), tokenizer)


def row_settings(pad_id, num_padding_at_beginning=1, **settings):
    """Settings with this PAD id; keywords are Settings fields (LossOptions' go into `loss`)."""
    from utils.settings import LossOptions, Settings
    loss = LossOptions(**{key: settings.pop(key) for key in list(settings) if key in LossOptions.__dataclass_fields__})
    settings.setdefault("model_name_or_path", "")
    return Settings(num_padding_at_beginning=num_padding_at_beginning, pad_token_id=pad_id, loss=loss, **settings)
