"""The HTTP scoring server, run as a real process on a free loopback port and called over HTTP.

Run: python -m pytest tests/test_serve.py -q
"""
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
import torch

from tests.fixtures import ROOT, child_env, learnable_pairs
from utils.dist import free_port

SERVE = os.path.join(ROOT, "evaluation_scripts", "serve.py")
MAX_SEQ_LEN = 64
REWARD_MEAN, REWARD_STD = 0.25, 2.0


@pytest.fixture(scope="module")
def reward_dir(tiny_opt, tmp_path_factory):
    """A reward model folder (tiny OPT, random trained-looking head, saved reward mean/std): no training."""
    from model.create import load_tokenizer
    from tests.fixtures import reward_model
    from model.io import save_hf_model
    tokenizer = load_tokenizer(tiny_opt)
    torch.manual_seed(0)
    model = reward_model(tiny_opt, tokenizer, num_padding_at_beginning=1).eval()
    torch.nn.init.normal_(model.v_head.weight)
    model.reward_stats = {"reward_mean": REWARD_MEAN, "reward_std": REWARD_STD}
    folder = str(tmp_path_factory.mktemp("reward_model"))
    save_hf_model(model, tokenizer, folder, zero_stage=0)
    return folder


@pytest.fixture(scope="module")
def offline(reward_dir):
    """texts -> (rewards, token lengths) as evaluate.py --score computes them, in this process."""
    from transformers import AutoTokenizer

    from model.reward_model import RewardModel
    from model.scoring import score_texts
    model = RewardModel.from_pretrained(reward_dir)
    tokenizer = AutoTokenizer.from_pretrained(reward_dir)
    eot = model.end_of_conversation_token

    def score(texts):
        texts = [t + eot for t in texts]
        rewards = [r for s in range(0, len(texts), 8)
                   for r in score_texts(model, tokenizer, texts[s:s + 8], MAX_SEQ_LEN).tolist()]
        return rewards, [len(ids) for ids in tokenizer(texts)["input_ids"]]
    return score


class Server:
    """serve.py as a child process; `url`, `log()` (its stdout + stderr), `stop()` -> exit status."""

    def __init__(self, model_dir, tmp_path, *flags):
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log_path = tmp_path / f"serve_{self.url.rsplit(':', 1)[1]}.log"
        command = [sys.executable, SERVE, model_dir, "--port", self.url.rsplit(":", 1)[1],
                   "--max_seq_len", str(MAX_SEQ_LEN), *flags]
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=child_env(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"server exited early:\n{self.log()}"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"server did not answer /health in 90 s:\n{self.log()}")

    def log(self):
        return self.log_path.read_text()

    def stop(self):
        """SIGTERM, then the exit status; a server still running 60 s later is killed and fails the test."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            pytest.fail(f"server still running 60 s after SIGTERM:\n{self.log()}")


@pytest.fixture(scope="module")
def server(reward_dir, tmp_path_factory):
    running = Server(reward_dir, tmp_path_factory.mktemp("serve"), "--max_wait_ms", "50",
                     "--max_batch_tokens", "2048", "--max_texts_per_request", "50", "--max_body_bytes", "100000")
    yield running
    assert running.stop() == 0, running.log()


def sample_texts(count, seed):
    """prompt + answer texts of varied length; every 10th is long enough to be cut at MAX_SEQ_LEN."""
    rows = learnable_pairs(count, seed)
    return [r["prompt"] + r["chosen"] * (6 if i % 10 == 3 else 1) for i, r in enumerate(rows)]


def test_concurrent_clients_get_the_offline_scores(server, offline):
    texts = sample_texts(200, seed=3)
    expected, lengths = offline(texts)
    rng = random.Random(0)
    requests, start = [], 0  # requests of 1..12 texts
    while start < len(texts):
        size = rng.randint(1, 12)
        requests.append(list(range(start, min(start + size, len(texts)))))
        start += size
    before = httpx.get(server.url + "/health").json()
    got, truncated = {}, set()

    def client(mine):
        with httpx.Client(timeout=60) as http:
            for indices in mine:
                response = http.post(server.url + "/score", json={"texts": [texts[i] for i in indices]})
                assert response.status_code == 200, response.text
                body = response.json()
                got.update(zip(indices, body["rewards"]))
                truncated.update(indices[k] for k in body["truncated"])
    threads = [threading.Thread(target=client, args=(requests[k::8],), daemon=True) for k in range(8)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 300
    for thread in threads:
        thread.join(timeout=max(1.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), f"requests unanswered after 300 s:\n{server.log()}"
    assert sorted(got) == list(range(len(texts)))
    assert [got[i] for i in range(len(texts))] == pytest.approx(expected, abs=1e-5)
    assert truncated == {i for i, n in enumerate(lengths) if n > MAX_SEQ_LEN} and truncated
    after = httpx.get(server.url + "/health").json()
    assert after["texts"] - before["texts"] == len(texts)
    assert after["forwards"] - before["forwards"] < len(requests)  # requests were merged


def test_prompts_answers_and_get_reward_match_texts(server, offline):
    rows = learnable_pairs(5, seed=4)
    texts = [r["prompt"] + r["chosen"] for r in rows]
    expected, _ = offline(texts)
    by_pairs = httpx.post(server.url + "/score", json={"prompts": [r["prompt"] for r in rows],
                                                       "answers": [r["chosen"] for r in rows]}).json()
    assert by_pairs["rewards"] == pytest.approx(expected, abs=1e-5) and by_pairs["truncated"] == []
    # OpenRLHF's client sends prompts and labels too, and decodes queries with special tokens and padding:
    # runs of BOS/EOS/PAD (`</s>`), OPT's own `<pad>` and the end-of-conversation text at either end
    queries = [texts[0], "</s>" + texts[1] + "</s>", "</s></s><pad>" + texts[2] + "<pad></s><pad><pad>",
               "<pad><pad>" + texts[3] + "<|endoftext|>", texts[4] + "</s><|endoftext|><pad>"]
    openrlhf = {"query": queries, "prompts": [""] * 5, "labels": [""] * 5}
    response = httpx.post(server.url + "/get_reward", json=openrlhf)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["rewards"] == pytest.approx(expected, abs=1e-5) and body["scores"] == body["rewards"]
    assert body["extra_logs"] == {"truncated": [0.0] * 5}
    as_texts = httpx.post(server.url + "/score", json={"texts": queries[2:]}).json()["rewards"]
    assert all(abs(a - b) > 1e-4 for a, b in zip(as_texts, expected[2:]))  # the padding would change the scores


DEEP = b"[" * 40000 + b"]" * 40000  # past any recursion limit, within --max_body_bytes


@pytest.mark.parametrize("body, status, message", [
    (b'{"texts": ["unclosed"', 400, "not valid JSON"),
    (b"", 400, "not valid JSON"),
    (b'{"texts": ["\xff"]}', 400, "'utf-8' codec can't decode byte 0xff"),  # not UTF-8
    (b'{"texts": ["\\ud800 x"]}', 400, "'texts'[0] is not valid Unicode: character 0 is a lone surrogate"),
    (b'{"texts": ["ok"], "\\udc00": 1}', 400, "a key in body is not valid Unicode"),
    (b'{"texts": ' + DEEP + b"}", 400, "nested too deeply"),
    (b'{"texts": ' + b"[" * 30 + b"]" * 30 + b"}", 400, "nested 21 levels deep; a request nests at most 20"),
    (b'{"texts": [' + b"9" * 5000 + b"]}", 400, "an integer of 5000 digits"),
    (b'{"texts": [NaN]}', 400, "NaN, which is not JSON"),
    (b'{"texts": [1e999]}', 422, "'texts'[0] must be a string; got a number"),
    (b'["a list"]', 422, "must be a JSON object; got an array"),
    (b"12", 422, "must be a JSON object; got a number"),
    (b'{"texts": "one string"}', 422, "'texts' must be a non-empty list; got a string"),
    (b'{"texts": []}', 422, "(empty)"),
    (b'{"texts": ["ok", 3]}', 422, "'texts'[1] must be a string; got a number"),
    (b'{"texts": ["ok", " \\n "]}', 422, "'texts'[1] holds no text"),
    (b'{"text": ["typo"]}', 422, "exactly one of"),
    (b'{"texts": ["a"], "answers": ["b"]}', 422, "got keys ['answers', 'texts']"),
    (b'{"prompts": ["a", "b"], "answers": ["c"]}', 422, "'answers' has 1"),
    (b'{"prompts": ["a"], "answers": [null]}', 422, "'answers'[0] must be a string; got null"),
    (b'{"conversations": [[{"role": "user", "content": "hi"}]]}', 422, "no chat template"),
    (json.dumps({"texts": ["x"] * 51}).encode(), 413, "at most 50"),
    (json.dumps({"texts": ["x" * 200000]}).encode(), 413, "100000-byte limit"),
])
def test_bad_requests_get_a_message_and_the_server_keeps_serving(server, body, status, message):
    response = httpx.post(server.url + "/score", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status and message in response.json()["detail"], response.text
    assert httpx.post(server.url + "/score", json={"texts": ["Human: hi Assistant: hello"]}).status_code == 200


def test_bad_get_reward_request(server):
    response = httpx.post(server.url + "/get_reward", json={"queries": ["a"]})
    assert response.status_code == 422 and "'query' is missing" in response.json()["detail"]
    response = httpx.post(server.url + "/get_reward", json={"query": ["x", "</s><pad><|endoftext|></s>"]})
    assert response.status_code == 422 and "'query'[1] holds no text" in response.json()["detail"]


def test_info_describes_the_model(server, reward_dir):
    info = httpx.get(server.url + "/info").json()
    assert info["model"] == os.path.abspath(reward_dir) and info["dtype"] == "float32"
    assert info["max_seq_len"] == MAX_SEQ_LEN and info["num_padding_at_beginning"] == 1
    assert info["reward_mean"] == REWARD_MEAN and info["reward_std"] == REWARD_STD
    assert info["end_of_conversation_token"] == "<|endoftext|>" and info["end_token_rule"] == "deepspeed_chat"
    assert "pad token number 2" in info["end_token_rule_meaning"]
    assert info["max_batch_tokens"] == 2048 and info["chat_template"] is False


def test_sigterm_during_load_loses_no_accepted_request(reward_dir, offline, tmp_path):
    """Every request gets a full 200 or never reaches the server: the server's count of answered
    requests equals the clients' count of 200s, and requests still waiting at SIGTERM are answered."""
    server = Server(reward_dir, tmp_path, "--max_wait_ms", "200")
    texts = sample_texts(24, seed=5)
    expected, _ = offline(texts)
    ok, refused, wrong = [], [], []
    deadline = time.monotonic() + 120  # the clients give up after it, whatever the server does

    def client(k):
        verl = k % 2 == 1  # half the clients send /score requests of 3 texts, half verl's one-text /classify
        with httpx.Client(timeout=60) as http:
            while time.monotonic() < deadline:
                indices = [(k + 3 * j) % len(texts) for j in range(1 if verl else 3)]
                try:
                    if not verl:
                        response = http.post(server.url + "/score", json={"texts": [texts[i] for i in indices]})
                    else:
                        response = http.post(server.url + "/classify", json={"model": "rm", "input": texts[indices[0]],
                                                                             "activation": False})
                except httpx.TransportError as error:
                    refused.append(error)
                    return
                body = response.json()
                got = [d["probs"][-1] for d in body.get("data", [])] if verl else body.get("rewards")
                if response.status_code != 200 or got != pytest.approx([expected[i] for i in indices], abs=1e-5):
                    wrong.append(response.text)
                ok.append(time.monotonic())
                k += 1
    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(8)]
    for thread in threads:
        thread.start()
    while len(ok) < 16:  # answers are coming: the server is under load
        if server.process.poll() is not None or time.monotonic() > deadline or refused:
            server.stop()
            pytest.fail(f"{len(ok)} answers, {len(refused)} refused, server exit {server.process.returncode}:\n"
                        f"{server.log()}")
        time.sleep(0.01)
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(timeout=max(1.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), f"clients still served after SIGTERM:\n{server.log()}"
    assert server.process.wait(timeout=60) == 0, server.log()
    assert not wrong and len(refused) == 8
    assert any(t > signalled for t in ok)  # in flight at SIGTERM, then answered
    assert f"answering {len(ok)} of {len(ok)} accepted scoring requests ({len(ok)} with rewards)" in server.log()


# ---- in-process: rescaling flags, batching and fault isolation -------------------------------------

def test_normalize_and_center_use_the_saved_statistics(reward_dir, offline):
    from evaluation_scripts.serve import load_scorer, parse_args
    texts = ["Human: hi Assistant: thanks, great!<|endoftext|>", "Human: hi Assistant: awful.<|endoftext|>"]

    def rewards(*flags):
        scorer = load_scorer(parse_args([reward_dir, "--max_seq_len", str(MAX_SEQ_LEN), *flags]))
        return scorer(scorer.encode(texts)[0])
    raw, normalized, centered = rewards(), rewards("--normalize"), rewards("--center")
    assert normalized == pytest.approx([(r - REWARD_MEAN) / REWARD_STD for r in raw], abs=1e-6)
    assert centered == pytest.approx([r - REWARD_MEAN for r in raw], abs=1e-6)


def test_cheapest_batches_weigh_padding_against_one_more_forward():
    """Worked by hand for rows of 100, 20, 20, 20 tokens: apart they cost 100 + 60 tokens plus two forwards,
    together 4 x 100 plus one, so they merge only when a forward costs more than the 240 padded tokens."""
    from evaluation_scripts.batching import cheapest_batches
    lengths = [100, 20, 20, 20]
    assert cheapest_batches(lengths, 1000, forward_cost=10) == [(0, 1), (1, 4)]  # 110 + 70 < 410
    assert cheapest_batches(lengths, 1000, forward_cost=300) == [(0, 4)]  # 700 < 400 + 360
    assert cheapest_batches(lengths, 200, forward_cost=300) == [(0, 1), (1, 4)]  # 4 x 100 is over the budget
    assert cheapest_batches(lengths, 1000, forward_cost=0) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert cheapest_batches([300, 10], 200, forward_cost=1000) == [(0, 1), (1, 2)]  # too long to share
    assert cheapest_batches([], 200, forward_cost=10) == []


class FakeScorer:
    """Rows of characters; reward = row length. A row holding 'boom' makes its whole batch raise; with
    `hold`, the first forward waits until `release` is set."""

    def __init__(self, hold=False):
        self.batches = []
        self.started, self.release = threading.Event(), threading.Event()
        if not hold:
            self.release.set()

    def __call__(self, rows):
        self.batches.append(["".join(row) for row in rows])
        self.started.set()
        assert self.release.wait(timeout=30), "the test never released the first forward"
        if any("boom" in "".join(row) for row in rows):
            raise RuntimeError("boom")
        return [float(len(row)) for row in rows]


def score_concurrently(batcher, requests, before=None):
    """Score each request (a list of texts, as character rows) through `batcher` at once; `before(tasks)`
    runs after the first request is queued. Returns each request's rewards or exception."""
    async def run():
        tasks = [asyncio.ensure_future(batcher.score([list(t) for t in requests[0]]))]
        await asyncio.sleep(0)
        if before:
            await asyncio.get_running_loop().run_in_executor(None, before)
        tasks += [asyncio.ensure_future(batcher.score([list(t) for t in texts])) for texts in requests[1:]]
        return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=60)
    return asyncio.run(run())


def test_an_error_fails_only_its_own_request():
    from evaluation_scripts.batching import Batcher
    scorer = FakeScorer()
    batcher = Batcher(scorer, max_batch_tokens=10000, max_wait_s=0.2, forward_cost=1000)
    batcher.start()
    first, second, third = score_concurrently(batcher, [["aa", "b" * 150], ["boom", "c"], ["dddd"]])
    batcher.stop()
    assert first == [2.0, 150.0] and third == [4.0]
    assert isinstance(second, RuntimeError)
    assert scorer.batches[0] == ["b" * 150, "boom", "dddd", "aa", "c"]  # one merged batch, longest first


def test_requests_queued_during_a_forward_share_the_next_and_a_lone_one_never_waits():
    """With no wait (--max_wait_ms 0) a request at an idle server is scored at once, alone; the requests
    that arrive while that forward runs are merged into the next one."""
    from evaluation_scripts.batching import Batcher
    scorer = FakeScorer(hold=True)
    batcher = Batcher(scorer, max_batch_tokens=10000, max_wait_s=0.0, forward_cost=1000)
    batcher.start()

    def while_the_first_runs():
        assert scorer.started.wait(timeout=30)
        threading.Timer(0.2, scorer.release.set).start()  # after the other requests are queued
    results = score_concurrently(batcher, [["first"], ["bb"], ["ccc"], ["d"]], before=while_the_first_runs)
    batcher.stop()
    assert results == [[5.0], [2.0], [3.0], [1.0]]
    assert scorer.batches == [["first"], ["ccc", "bb", "d"]]


TEMPLATE = "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
HI = [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."}]


def chat_texts(tokenizer):
    """The server's request reader for a chat model (no end-of-conversation text), 10 texts a request."""
    from data.inputs import ModelInputs
    from evaluation_scripts.serve import Texts
    from tests.fixtures import row_settings
    return Texts(ModelInputs(tokenizer, row_settings(tokenizer.pad_token_id, end_of_conversation_token="")), 10)


def test_conversations_use_the_chat_template(reward_dir):
    from model.create import load_tokenizer
    tokenizer = load_tokenizer(reward_dir, chat_template=TEMPLATE)
    # the template's BOS text is dropped: the tokenizer adds its own
    assert chat_texts(tokenizer).score({"conversations": [HI]}) == ["user: Hi!\nassistant: Hello.\n"]


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "Hi!"}],  # ends on a user turn
    HI + [{"role": "tool", "content": "{}"}],
    [{"role": "human", "content": "Hi!"}, {"role": "assistant", "content": "Hello."}],
    [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "  "}],
    [{"role": "user"}, {"role": "assistant", "content": "Hello."}],
    [{"role": "system", "content": "Be kind."}],
    [], "Hi!", [["user", "Hi!"]],
])
def test_conversations_training_refuses_get_its_message(reward_dir, messages):
    """/score checks conversations with training's own function: what it refuses gets 422 and its message,
    naming the item."""
    from data.chat import RowError, conversation
    from evaluation_scripts.serve import BadRequest
    from model.create import load_tokenizer
    texts = chat_texts(load_tokenizer(reward_dir, chat_template=TEMPLATE))
    with pytest.raises(RowError) as training:
        conversation([], messages, "conversations[1]")
    with pytest.raises(BadRequest) as serving:
        texts.score({"conversations": [HI, messages]})
    assert serving.value.status == 422 and str(serving.value) == str(training.value)
    assert "conversations[1]" in str(serving.value)


def test_queries_lose_padding_and_keep_the_trained_ends(tmp_path):
    """Runs of PAD, EOS and BOS at either end of a query (OpenRLHF decodes them) go; what remains is the
    text training scored: a chat template's start and end of conversation included."""
    from data.chat import ChatRenderer
    from evaluation_scripts.serve import QueryEnds
    from model.create import distinct_pad_token, load_tokenizer
    from model.tiny import CHAT_STYLES, build_tiny_chat, build_tiny_opt
    rng = random.Random(0)
    models = [(build_tiny_opt(str(tmp_path / "opt")), False, "<|endoftext|>", ["<pad>"])]  # OPT's own PAD, too
    models += [(build_tiny_chat(str(tmp_path / style), style), True, "", []) for style in CHAT_STYLES]
    for base, chat, eot, extra in models:
        tokenizer = load_tokenizer(base)
        if chat:
            tokenizer = load_tokenizer(base, pad_token=distinct_pad_token(tokenizer)[0])
        render = ChatRenderer(tokenizer)
        trained = render(HI) if chat else " Human: Hi! Assistant: Hello."
        pads = [t for t in (tokenizer.pad_token, tokenizer.eos_token, tokenizer.bos_token, *extra) if t]
        ends = QueryEnds(tokenizer, render, eot)
        answer_end = trained.rindex("Hello.") + len("Hello.")
        for _ in range(20):
            runs = ["".join(rng.choices(pads, k=rng.randint(0, 4))) for _ in range(2)]
            assert ends(runs[0] + trained + runs[1]) == trained, (base, runs)
            # a response that stops at its EOS, without the rest of the template's end of turn (ChatML's "\n")
            assert ends(runs[0] + trained[:answer_end] + runs[1]) == trained, (base, runs)
        assert ends(trained) == trained and ends("".join(pads)) == ""


def test_docs_give_every_flag_and_its_default():
    """docs/serving.md's flag table lists every flag of serve.py with the default `--help` shows."""
    import re

    from evaluation_scripts.serve import parse_args
    with open(os.path.join(ROOT, "docs", "serving.md")) as f:
        rows = [line.split("|")[1:3] for line in f if line.startswith("| `--")]
    documented = {flag: default.strip() for flags, default in rows for flag in re.findall(r"`(--\w+)`", flags)}
    defaults = vars(parse_args(["MODEL"]))
    del defaults["model_dir"]
    assert set(documented) == {f"--{name}" for name in defaults}
    for name, value in defaults.items():
        shown = "off" if value is False else f"{value:g}" if isinstance(value, float) else str(value)
        cell = documented[f"--{name}"]
        assert value is None or shown in re.split(r"[ ,]+", cell), (name, shown, cell)
