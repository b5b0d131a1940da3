"""vLLM's /classify on the scoring server, called with the RL loops' own payloads over loopback HTTP.

verl's reward loop (verl/experimental/reward_loop/reward_loop.py, `compute_score_disrm`) posts one text per
request, `{"model": M, "input": text, "activation": false}` (newer releases: `"use_activation": false`), and
reads `data[-1]["probs"][-1]`. OpenRLHF's remote reward client posts `{"query": [text], "prompts": [...],
"labels": [...]}` to /get_reward, one sample per request. Both must get the offline reward of the text.

Run: python -m pytest tests/test_serve_classify.py -q
"""
import math
import threading
import time

import httpx
import pytest

from tests.test_serve import MAX_SEQ_LEN, Server, offline, reward_dir, sample_texts  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def server(reward_dir, tmp_path_factory):  # noqa: F811
    running = Server(reward_dir, tmp_path_factory.mktemp("serve"), "--max_texts_per_request", "8")
    yield running
    assert running.stop() == 0, running.log()


def concurrently(count, send, clients=8, timeout=300):
    """send(i) for i in range(count) from `clients` threads at once -> {i: its result}."""
    results = {}

    def client(mine):
        with httpx.Client(timeout=60) as http:
            for i in mine:
                results[i] = send(http, i)
    threads = [threading.Thread(target=client, args=(range(k, count, clients),), daemon=True) for k in range(clients)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(timeout=max(1.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), f"requests unanswered after {timeout} s"
    return results


@pytest.mark.parametrize("flag", ["activation", "use_activation"])
def test_verls_payload_gets_the_offline_reward(server, offline, flag):  # noqa: F811
    texts = sample_texts(40, seed=7)  # every 10th is cut at MAX_SEQ_LEN
    expected, _ = offline(texts)

    def send(http, i):
        response = http.post(server.url + "/classify", json={"model": "my-rm", "input": texts[i], flag: False})
        assert response.status_code == 200, response.text
        return response.json()["data"][-1]["probs"][-1]
    got = concurrently(len(texts), send)
    assert [got[i] for i in range(len(texts))] == pytest.approx(expected, abs=1e-5)


def test_openrlhfs_payload_one_sample_per_request_gets_the_offline_reward(server, offline):  # noqa: F811
    texts = sample_texts(24, seed=8)
    expected, lengths = offline(texts)

    def send(http, i):
        response = http.post(server.url + "/get_reward", json={"query": [texts[i]], "prompts": ["p"], "labels": [""]})
        assert response.status_code == 200, response.text
        body = response.json()
        return body["rewards"][0], body["extra_logs"]["truncated"][0]
    got = concurrently(len(texts), send)
    assert [got[i][0] for i in range(len(texts))] == pytest.approx(expected, abs=1e-5)
    assert [got[i][1] for i in range(len(texts))] == [float(n > MAX_SEQ_LEN) for n in lengths]


def test_the_response_has_vllms_shape_and_activation_is_the_sigmoid(server, offline):  # noqa: F811
    """The default of `use_activation` is vLLM's: its Classification API docs
    (https://docs.vllm.ai/en/latest/models/pooling_models/classify/, "Completion Parameters" and "Enable/disable
    activation") say `use_activation` None uses the pooler's default, which is true, and that pooler's
    activation for a one-label classifier is the sigmoid (softmax needs two labels or more)."""
    texts = sample_texts(3, seed=9)
    rewards, lengths = offline(texts)
    sigmoids = [1 / (1 + math.exp(-r)) for r in rewards]
    for path, extra, probs in [("/classify", {}, sigmoids), ("/v1/classify", {"use_activation": True}, sigmoids),
                               ("/classify", {"activation": None}, sigmoids),
                               ("/v1/classify", {"activation": False, "use_activation": None}, rewards)]:
        response = httpx.post(server.url + path, json={"model": "my-rm", "input": texts, **extra})
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"id", "object", "created", "model", "data", "usage"} and body["object"] == "list"
        assert body["id"].startswith("classify-") and abs(body["created"] - time.time()) < 600
        assert [d["index"] for d in body["data"]] == [0, 1, 2]
        assert all(d["label"] == "LABEL_0" and d["num_classes"] == 1 and len(d["probs"]) == 1 for d in body["data"])
        assert [d["probs"][0] for d in body["data"]] == pytest.approx(probs, abs=1e-5), (path, extra)
        tokens = sum(min(n, MAX_SEQ_LEN) for n in lengths)
        assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0,
                                 "prompt_tokens_details": None}
    models = httpx.get(server.url + "/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == [body["model"]]
    assert models["data"][0]["max_model_len"] == MAX_SEQ_LEN


def test_a_cut_text_is_scored_as_training_cuts_it_and_the_response_says_so(server, offline):  # noqa: F811
    texts = ["Human: hi Assistant: " + "thanks, great! " * 200, "Human: hi Assistant: fine."]
    expected, lengths = offline(texts)
    assert lengths[0] > 10 * MAX_SEQ_LEN
    for path, body in [("/classify", {"input": texts, "activation": False}), ("/score", {"texts": texts})]:
        response = httpx.post(server.url + path, json=body)
        assert response.status_code == 200 and response.headers["x-truncated-inputs"] == "0", response.text
        got = response.json()
        got = [d["probs"][0] for d in got["data"]] if "data" in got else got["rewards"]
        assert got == pytest.approx(expected, abs=1e-5)
    response = httpx.post(server.url + "/classify", json={"input": texts[1:]})
    assert "x-truncated-inputs" not in response.headers


@pytest.mark.parametrize("body, status, message", [
    ({"model": "m"}, 422, "'input' is missing"),
    ({"input": 3}, 422, "'input' must be a text or a non-empty list of texts; got a number"),
    ({"input": []}, 422, "'input' must be a non-empty list; got an array (empty)"),
    ({"input": [101, 2023]}, 422, "'input'[0] must be a string; got a number"),  # token ids: not taken
    ({"input": "  "}, 422, "'input'[0] holds no text"),
    ({"input": "hi", "activation": "no"}, 422, "'activation' must be true, false or null; got a string"),
    ({"input": "hi", "activation": False, "use_activation": True}, 422, "disagree"),
    ({"input": "hi", "model": 7}, 422, "'model' must be a string; got a number"),
    ({"input": "hi", "truncate_prompt_tokens": 8}, 422, "/classify does not read ['truncate_prompt_tokens']"),
    ({"input": ["hi"] * 9}, 413, "at most 8 per request"),
])
def test_bad_classify_requests_get_one_line_and_the_server_keeps_serving(server, body, status, message):
    response = httpx.post(server.url + "/classify", json=body)
    detail = response.json()["detail"]
    assert response.status_code == status and message in detail and "\n" not in detail, response.text
    assert httpx.post(server.url + "/classify", json={"input": "Human: hi Assistant: hello"}).status_code == 200
