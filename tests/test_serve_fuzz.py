"""The HTTP scoring server under seeded random client mistakes: random JSON shapes, wrong types, invalid
Unicode, deep nesting, huge numbers, broken conversations and padded OpenRLHF queries, sent to /score,
/get_reward and /classify of one server (a tiny Llama-style chat reward model, PAD `<|pad|>`, last_token
rule) on a loopback port.

Run: python -m pytest tests/test_serve_fuzz.py -q      (about 30 s on 2 cores)
"""
import json
import math
import random
import time

import httpx
import pytest
import torch

from tests.test_serve import Server

MAX_SEQ_LEN = 64
LIMIT = 16  # --max_texts_per_request
MAX_BODY = 300000  # --max_body_bytes
REQUESTS = 200
DEADLINE_S = 240  # all fuzz requests together
GOOD = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about item 7."},
        {"role": "assistant", "content": "It is a kind and helpful thing."}]
WORDS = ["Hi", "thanks", " ", "\n", "é", "😀", "\u200b", "\x00", "<|pad|>", "<|eot_id|>", "<|begin_of_text|>",
         "<|start_header_id|>", "user", "assistant", "{{ x }}", "{% if %}", "\\", '"']
SURROGATES = ["\ud800", "\udfff", "x\udc00y"]
NOT_TEXT = [None, 0, -2.5, 10 ** 40, True, [], {}, ["a"], {"role": "user"}]  # where a string belongs


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    """A reward model folder as main.py saves one after a chat run (random head): no training."""
    from model.create import NEW_PAD_TOKEN, load_tokenizer
    from model.io import save_hf_model
    from model.tiny import build_tiny_chat
    from tests.fixtures import reward_model
    from utils.spans import LAST_TOKEN
    root = tmp_path_factory.mktemp("chat_rm")
    base = build_tiny_chat(str(root / "base"), "llama")
    tokenizer = load_tokenizer(base, pad_token=NEW_PAD_TOKEN)
    torch.manual_seed(0)
    model = reward_model(base, tokenizer, num_padding_at_beginning=0, end_token_rule=LAST_TOKEN,
                         pad_token=NEW_PAD_TOKEN, end_of_conversation_token="").eval()
    torch.nn.init.normal_(model.v_head.weight)
    save_hf_model(model, tokenizer, str(root / "model"), zero_stage=0)
    return str(root / "model")


@pytest.fixture(scope="module")
def server(chat_dir, tmp_path_factory):
    running = Server(chat_dir, tmp_path_factory.mktemp("serve"), "--max_wait_ms", "5", "--max_texts_per_request",
                     str(LIMIT), "--max_body_bytes", str(MAX_BODY))
    yield running
    assert running.stop() == 0, running.log()


@pytest.fixture(scope="module")
def offline(chat_dir):
    """conversations -> rewards as training scores them: rendered by ChatRenderer, score_texts in this process."""
    from data.chat import ChatRenderer
    from model.create import build_tokenizer, load_reward_model
    from model.scoring import score_texts
    model = load_reward_model(chat_dir)
    tokenizer = build_tokenizer(model.settings, source=chat_dir)
    render = ChatRenderer(tokenizer)
    return lambda conversations: score_texts(model, tokenizer, [render(c) for c in conversations], MAX_SEQ_LEN).tolist()


# ---- random bodies ---------------------------------------------------------------------------------

def random_text(rng):
    return "".join(rng.choice(WORDS) for _ in range(rng.randint(0, 6)))


def random_value(rng, depth=0):
    """A random JSON value of any shape (nested up to 4 levels)."""
    kind = rng.choice(["str", "int", "float", "bool", "null", "list", "dict"] if depth < 4 else ["str", "int"])
    if kind == "list":
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if kind == "dict":
        return {random_text(rng) or "k": random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}
    return {"str": lambda: random_text(rng), "int": lambda: rng.randint(-10 ** 30, 10 ** 30),
            "float": lambda: rng.uniform(-1e300, 1e300), "bool": lambda: rng.random() < 0.5,
            "null": lambda: None}[kind]()


def random_conversation(rng):
    """One training accepts: optional system turn, then a user turn and the assistant's answer (never empty)."""
    system = [{"role": "system", "content": "s" + random_text(rng)}] if rng.random() < 0.3 else []
    return system + [{"role": "user", "content": random_text(rng) + "x"},
                     {"role": "assistant", "content": "y" + random_text(rng)}]


def broken_conversation(rng):
    """A conversation training refuses (data/chat.py): each break is one of its rules."""
    messages = random_conversation(rng)
    breaks = [lambda m: m[:-1],  # ends on a user turn
              lambda m: m + [{"role": "tool", "content": "{}"}],
              lambda m: [dict(m[0], role=rng.choice(["human", "gpt", "Tool", "", "USER"]))] + m[1:],
              lambda m: m[:-1] + [{"role": "assistant", "content": rng.choice(["", " ", "\n\t"])}],
              lambda m: m[:-1] + [{"role": "assistant"}],
              lambda m: m[:-1] + [{"role": "assistant", "content": rng.choice(NOT_TEXT)}],
              lambda m: [],
              lambda m: rng.choice(["text", 1, None, {"role": "user"}])]
    return rng.choice(breaks)(messages)


def valid_body(rng):
    """A body the server scores: (endpoint, JSON object)."""
    n = rng.randint(1, 3)
    return rng.choice([
        ("/score", {"texts": [random_text(rng) + "z" for _ in range(n)]}),
        ("/score", {"prompts": [random_text(rng) + "p" for _ in range(n)],
                    "answers": [random_text(rng) for _ in range(n)]}),
        ("/score", {"conversations": [random_conversation(rng) for _ in range(n)]}),
        ("/get_reward", {"query": [random_text(rng) + "q" for _ in range(n)], "prompts": [""] * n, "labels": [""] * n}),
        ("/classify", {"input": [random_text(rng) + "c" for _ in range(n)], "model": "rm",
                       rng.choice(["activation", "use_activation"]): rng.choice([True, False, None])}),
    ])


def wrong_field(rng, endpoint, key):
    """A value of the wrong type for body[key]: a list of texts is right for every field but 'conversations',
    and one text is right for /classify's 'input'."""
    choices = [value for value in NOT_TEXT + ["text"] if key == "conversations" or value != ["a"]]
    return rng.choice([value for value in choices if endpoint != "/classify" or value != "text"])


def json_bytes(value):
    return json.dumps(value).encode()  # ensure_ascii: a lone surrogate becomes a \ud800 escape


def with_surrogate(body, key, rng):
    """`body` with a lone surrogate in its first text (a message's content for conversations)."""
    first = body[key][0]
    if isinstance(first, list):
        first = [dict(first[0], content=first[0]["content"] + rng.choice(SURROGATES))] + first[1:]
    else:
        first = rng.choice(SURROGATES) + first
    return dict(body, **{key: [first] + body[key][1:]})


def mistake(rng):
    """(what, endpoint, body bytes) of one client mistake, mostly made from a valid body."""
    endpoint, body = valid_body(rng)
    key = next(iter(body))
    depth = rng.choice([21, 500, 5000, 100000])
    deep = b"[" * depth + b"]" * depth
    number = rng.choice([b"9" * rng.choice([1001, 5000, 50000]), b"NaN", b"Infinity", b"-Infinity"])
    mistakes = {
        "lone surrogate in a text": lambda: json_bytes(with_surrogate(body, key, rng)),
        "lone surrogate in a key": lambda: json_bytes({rng.choice(SURROGATES): 1, **body}),
        "deep nesting inside": lambda: json_bytes(body).replace(b"[", b"[" + deep + b", ", 1),
        "deep nesting": lambda: deep,
        "huge or non-finite number": lambda: json_bytes(body).replace(b"[", b"[" + number + b", ", 1),
        "field of a wrong type": lambda: json_bytes({**body, key: wrong_field(rng, endpoint, key)}),
        "item of a wrong type": lambda: json_bytes(dict(body, **{key: [rng.choice(NOT_TEXT)] + body[key][1:]})),
        "not an object": lambda: json_bytes(random_value(rng) if rng.random() < 0.7 else [body]),
        "too many items": lambda: json_bytes({key: body[key] * (LIMIT + 1)}),
        "cut short": lambda: json_bytes(body)[:rng.randrange(len(json_bytes(body)))],
        "not UTF-8": lambda: json_bytes(body).replace(b'"', b'"\xff', 1),
        "broken conversation": lambda: json_bytes({"conversations": [random_conversation(rng),
                                                                     broken_conversation(rng)]}),
        "unknown key": lambda: json_bytes({**body, random_text(rng) + "extra": random_value(rng, 3)}),
    }
    if endpoint == "/get_reward":
        del mistakes["unknown key"]  # OpenRLHF sends more keys than "query": the server ignores them
    what = rng.choice(sorted(mistakes))
    return what, ("/score" if what == "broken conversation" else endpoint), mistakes[what]()


def check_answer(response, what, sent):
    """A mistake gets a 4xx whose detail is one line saying what is wrong; a valid body gets finite rewards."""
    assert response.status_code < 500, (what, response.status_code, response.text[:500], sent[:300])
    body = response.json()
    if response.status_code >= 400:
        detail = body["detail"]
        assert isinstance(detail, str) and 10 < len(detail) < 1000 and "\n" not in detail, (what, detail)
        assert "Traceback" not in detail, (what, detail)
        return
    assert what == "valid", (f"a client mistake ({what}) was scored", response.text[:300], sent[:300])
    rewards = [item["probs"][0] for item in body["data"]] if "data" in body else body["rewards"]
    assert rewards and all(isinstance(r, float) and math.isfinite(r) for r in rewards), body


def test_fuzzed_bodies_get_4xx_and_the_server_keeps_scoring(server, offline):
    rng = random.Random(29)
    expected = offline([GOOD])
    deadline = time.monotonic() + DEADLINE_S
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for i in range(REQUESTS):
            assert time.monotonic() < deadline, f"{i} of {REQUESTS} requests in {DEADLINE_S} s:\n{server.log()[-3000:]}"
            assert server.process.poll() is None, f"the server died at request {i}:\n{server.log()[-3000:]}"
            if i % 4 == 3:  # a valid request between mistakes
                endpoint, body = valid_body(rng)
                what, sent = "valid", json_bytes(body)
            else:
                what, endpoint, sent = mistake(rng)
            try:
                response = http.post(endpoint, content=sent, headers={"content-type": "application/json"})
            except httpx.TransportError as error:
                raise AssertionError(f"request {i} failed ({error}):\n{server.log()[-3000:]}") from error
            check_answer(response, what, sent)
        after = http.post("/score", json={"conversations": [GOOD]})
        assert after.status_code == 200 and after.json()["rewards"] == pytest.approx(expected, abs=1e-5)
        assert http.get("/health").json()["status"] == "ok"
    assert "Traceback" not in server.log(), server.log()[-3000:]


def test_padded_queries_score_like_their_conversations(server, offline, chat_dir):
    """/get_reward strips any run of PAD, EOS and BOS from both ends of a query and keeps the template's
    `<|eot_id|>` closing the last answer, where the last_token rule reads the score."""
    from data.chat import ChatRenderer
    from transformers import AutoTokenizer
    rng = random.Random(7)
    render = ChatRenderer(AutoTokenizer.from_pretrained(chat_dir))
    conversations = [random_conversation(rng) for _ in range(6)] + [GOOD]
    pads = ["<|pad|>", "<|eot_id|>", "<|begin_of_text|>"]

    def padding():
        return "".join(rng.choices(pads, k=rng.randint(0, 3)))
    queries = [padding() + render(c) + padding() for c in conversations]
    response = httpx.post(server.url + "/get_reward", json={"query": queries}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["rewards"] == pytest.approx(offline(conversations), abs=1e-5)
    unstripped = httpx.post(server.url + "/score", json={"texts": queries}, timeout=30).json()["rewards"]
    assert unstripped != pytest.approx(offline(conversations), abs=1e-5)  # the padding matters when not stripped
