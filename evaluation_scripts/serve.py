"""Serve a trained reward model over HTTP, batching concurrent requests into one forward at a time.

    python evaluation_scripts/serve.py OUT --port 8000
    curl -s localhost:8000/score -H 'Content-Type: application/json' \\
         -d '{"prompts": ["Human: Hi! Assistant:"], "answers": [" Hello, how can I help?"]}'

POST /score       {"texts": [...]} | {"prompts": [...], "answers": [...]} | {"conversations": [[{"role", "content"}, ...]]}
                  -> {"rewards": [...], "truncated": [indices of texts cut at max_seq_len]}; an ensemble (main.py
                  --num_heads > 1) adds "uncertainty" (the heads' std) and, with conservative_lambda, "conservative"
                  (reward - lambda x uncertainty); "heads": true in the body adds each head's scores ("heads");
                  an attribute model (main.py --objective regression) adds "attributes": [{name: value}, ...]
                  (rewards: attribute_weights . them)
POST /get_reward  {"query": [...]} -> {"rewards": [...], "scores": [...], "extra_logs": {...}}  (OpenRLHF's remote RM)
POST /classify, /v1/classify  {"input": text or [texts], "model", "use_activation" | "activation"}  (vLLM's, as verl
                  sends it) -> {"data": [{"index", "label", "probs": [reward or its sigmoid], "num_classes": 1}], ...}
GET  /v1/models, /health, /info

Texts are made and tokenised as training makes its rows (data/inputs.py: texts get the model's
end-of-conversation text, conversations are rendered with the chat template) and scored by
`model.scoring.score_ids`, so rewards equal `evaluate.py OUT --score` for the same texts and dtype.
Conversations are checked and rendered by training's own data/chat.py; a request training would refuse,
or one that cannot be read, gets a 4xx whose `detail` says what is wrong and where. A text cut at
max_seq_len is listed in the `X-Truncated-Inputs` header of every scoring endpoint's response.
"""
import argparse
import json
import math
import os
import signal
import statistics
import sys
import time
import traceback
import uuid

from data.chat import PROBE, RowError
from data.inputs import ModelInputs, encode_marking_cuts
from evaluation_scripts.batching import Batcher
from utils.settings import REGRESSION
from utils.spans import LAST_TOKEN

DTYPES = {"auto": None, "fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("model_dir", help="A reward model folder written by main.py.")
    server = parser.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1", help="Address to listen on (0.0.0.0: every interface).")
    server.add_argument("--port", type=int, default=8000, help="TCP port to listen on.")
    server.add_argument("--access_log", action="store_true", help="Log one line per HTTP request.")
    scoring = parser.add_argument_group("scoring")
    scoring.add_argument("--max_seq_len", type=int, default=None,
                         help="Tokens per text; longer texts are cut. None: the training run's, as evaluate.py.")
    scoring.add_argument("--dtype", choices=sorted(DTYPES), default="auto",
                         help="Weights dtype; auto: the dtype they were saved in (as evaluate.py).")
    scoring.add_argument("--device", default=None, help="Torch device. None: cuda if available, else cpu.")
    scoring.add_argument("--threads", type=int, default=None,
                         help="torch CPU threads. None: torch's default (one per core); on a CPU shared with "
                              "other work, fewer threads than cores is often faster.")
    rescale = scoring.add_mutually_exclusive_group()
    rescale.add_argument("--normalize", action="store_true",
                         help="Return (r - reward_mean) / reward_std, the eval-set statistics saved in config.json.")
    rescale.add_argument("--center", action="store_true", help="Return r - reward_mean (as --center_rewards).")
    batching = parser.add_argument_group("batching and limits")
    batching.add_argument("--max_batch_tokens", type=int, default=2048,
                          help="Padded tokens (texts x longest text) per forward; a longer single text runs alone. "
                               "Within it, texts are cut into the batches that cost least (padding against one "
                               "more forward).")
    batching.add_argument("--max_wait_ms", type=float, default=0.0,
                          help="How long the first request queued at an idle server waits for others to share its "
                               "forward (requests that arrive while a forward runs share the next one anyway; 0: a "
                               "lone client never waits).")
    batching.add_argument("--max_texts_per_request", type=int, default=1024,
                          help="Requests with more texts get 413.")
    batching.add_argument("--max_body_bytes", type=int, default=16 * 2 ** 20,
                          help="Request bodies larger than this get 413.")
    parser.add_argument("--debug", action="store_true", help="Show Python tracebacks for user errors.")
    return parser.parse_args(argv)


# ---- scoring ------------------------------------------------------------------------------------

CALIBRATION_TEXT = " Human: Could you tell me how to bake bread? Assistant: Mix flour, water, salt and yeast, " * 3


class Scorer:
    """Token ids and rewards of texts. `encode` runs on the server's one tokenizer thread and `__call__` on
    the batching thread: only `encode` uses the Rust tokenizer, which must not be used from two threads at once."""

    def __init__(self, model, tokenizer, max_seq_len, shift=0.0, scale=1.0):
        self.model, self.tokenizer, self.max_seq_len = model, tokenizer, max_seq_len
        self.shift, self.scale = shift, scale

    def encode(self, texts):
        """(token ids of each text as training tokenises it, whether each was cut at max_seq_len)."""
        return encode_marking_cuts(self.tokenizer, texts, self.max_seq_len)

    def __call__(self, rows):
        """Rewards of rows of token ids, rescaled as the flags ask: floats; for an ensemble (num_heads > 1),
        dicts of model/scoring.py `ensemble_scores`' fields ("reward", "uncertainty", "heads", "conservative"),
        each rescaled; for an attribute model (main.py --objective regression) {"reward": the combined reward,
        rescaled, "attributes": {name: output}}."""
        from model.scoring import attribute_scores, ensemble_scores, score_ids
        head = self.model.settings.head
        if head.objective == REGRESSION:
            scores = attribute_scores(self.model, score_ids(self.model, rows, per_head=True))
            return [{"reward": (r - self.shift) / self.scale, "attributes": dict(zip(head.attributes, a))}
                    for r, a in zip(scores["reward"].tolist(), scores["attributes"].tolist())]
        if head.num_heads == 1:
            return [(r - self.shift) / self.scale for r in score_ids(self.model, rows).tolist()]
        scores = ensemble_scores(self.model, score_ids(self.model, rows, per_head=True))
        scores = {key: (value if key == "uncertainty" else value - self.shift) / self.scale
                  for key, value in scores.items()}
        return [{key: value[i].tolist() for key, value in scores.items()} for i in range(len(rows))]

    def forward_cost(self, max_tokens, rows=4, repeats=3):
        """What one more forward costs, in tokens of compute, on this machine and dtype: a forward of T tokens
        takes about (cost + T) x per-token time. Timed on 1 and on `rows` rows of up to 64 tokens, each shape
        once untimed (first calls build kernels), then `repeats` times by turns; from the medians. On CPU the
        clock is this process's CPU time, which other work on the machine does not inflate. Clamped to
        0..max_tokens (at max_tokens merging always pays)."""
        now = time.process_time if self.model.v_head.weight.device.type == "cpu" else time.perf_counter
        row = self.encode([CALIBRATION_TEXT])[0][0][:64]
        times = {1: [], rows: []}
        for repeat in range(repeats + 1):
            for batch in ([row], [row] * rows):
                start = now()
                self(batch)
                if repeat:
                    times[len(batch)].append(now() - start)
        one, many = statistics.median(times[1]), statistics.median(times[rows])
        per_token = (many - one) / ((rows - 1) * len(row))
        return round(min(max(one / per_token - len(row), 0.0), max_tokens) if per_token > 0 else max_tokens, 1)


def load_scorer(args):
    """The model, tokenizer, max_seq_len and reward rescaling the flags ask for (UserError if impossible)."""
    from types import SimpleNamespace

    import torch

    from evaluation_scripts.evaluate import DATA_FLAGS, data_settings
    from model.create import build_tokenizer, load_reward_model, model_max_positions
    from utils.errors import UserError
    dtype = DTYPES[args.dtype] and getattr(torch, DTYPES[args.dtype])
    model = load_reward_model(args.model_dir, dtype=dtype, center_rewards=args.center)
    model.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tokenizer = build_tokenizer(model.settings, source=args.model_dir)
    flags = SimpleNamespace(**dict.fromkeys(DATA_FLAGS), model_dir=args.model_dir)
    flags.max_seq_len = args.max_seq_len
    max_seq_len = data_settings(flags)["max_seq_len"]
    positions = model_max_positions(args.model_dir)
    if max_seq_len < 1 or (positions and max_seq_len > positions):
        raise UserError(f"--max_seq_len {max_seq_len} is outside 1..{positions}, the model's positions.")
    shift, scale = 0.0, 1.0
    if args.normalize:
        stats = model.reward_stats
        if not stats.get("reward_std"):
            raise UserError(f"{args.model_dir}/config.json has no reward_mean/reward_std (or std is 0): "
                            "--normalize needs the statistics main.py saves after its final evaluation.")
        shift, scale = stats["reward_mean"], stats["reward_std"]
    return Scorer(model, tokenizer, max_seq_len, shift, scale)


# ---- requests -> texts --------------------------------------------------------------------------

MAX_DEPTH = 20  # containers a body may nest; a valid one needs 4 (body, conversations, a conversation, a message)
MAX_DIGITS = 1000  # digits of one JSON integer (no field of this API needs more)
# vLLM's /classify fields this server reads; those that cannot change a reward (user, request_id, priority)
# are accepted and ignored, as vLLM ignores what it does not use
CLASSIFY_FIELDS = ("input", "model", "use_activation", "activation", "user", "request_id", "priority")
SCORE_BODIES = {frozenset({"texts"}): "texts", frozenset({"prompts", "answers"}): "prompts",
                frozenset({"conversations"}): "conversations"}


class BadRequest(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def parse_json(raw):
    """The request body's JSON object; BadRequest with what cannot be read (400) or is not an object (422)."""
    try:
        data = json.loads(raw, parse_constant=_not_json, parse_int=_integer)
    except RecursionError:
        raise BadRequest(400, f"body is nested too deeply to read; a request nests at most {MAX_DEPTH} levels.") \
            from None
    except ValueError as error:
        raise BadRequest(400, f"body is not valid JSON: {error}.") from None
    if not isinstance(data, dict):
        raise BadRequest(422, f"body must be a JSON object; got {json_type(data)}.")
    check_values(data)
    return data


def _not_json(name):
    raise BadRequest(400, f"body holds {name}, which is not JSON (JSON numbers are finite).")


def _integer(digits):
    if len(digits) > MAX_DIGITS:
        raise BadRequest(400, f"body holds an integer of {len(digits)} digits; at most {MAX_DIGITS} are read.")
    return int(digits)


def check_values(data):
    """BadRequest(400) for nesting past MAX_DEPTH or a string (key or value) that is not Unicode: JSON lets
    `\\ud800` escape half a surrogate pair, which no tokenizer can read. Depth first with one iterator per
    open container, so neither recursion nor memory grows with the body's size."""
    keys, stack = [], [iter(data.items())]  # keys: the path to the container stack[-1] iterates
    while stack:
        key, value = next(stack[-1], (None, None))
        if key is None:  # this container is done
            stack.pop()
            if keys:
                keys.pop()
            continue
        if isinstance(key, str):
            _check_unicode(key, lambda: f"a key in {where(keys)}")
        if isinstance(value, str):
            _check_unicode(value, lambda: where(keys + [key]))
        elif isinstance(value, (dict, list)):
            keys.append(key)
            stack.append(iter(value.items()) if isinstance(value, dict) else enumerate(value))
            if len(stack) > MAX_DEPTH:
                raise BadRequest(400, f"{where(keys)} is nested {len(stack)} levels deep; a request nests at "
                                      f"most {MAX_DEPTH}.")


def where(keys):
    """A value's place in the body, as messages name it: 'texts'[0], 'conversations'[1][0]['role']."""
    return "body" if not keys else repr(keys[0]) + "".join(f"[{key!r}]" for key in keys[1:])


def _check_unicode(text, place):
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise BadRequest(400, f"{place()} is not valid Unicode: character {error.start} is a lone surrogate "
                              f"({text[error.start]!r}); send text as UTF-8.") from None


def json_type(value):
    """The JSON name of a parsed value's type, for messages."""
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array",
             dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def items_of(body, key, limit, kind=None):
    """body[key] as a non-empty list of at most `limit` items (each a `kind`, if given), else BadRequest."""
    if key not in body:
        raise BadRequest(422, f"'{key}' is missing.")
    value = body[key]
    if not isinstance(value, list) or not value:
        raise BadRequest(422, f"'{key}' must be a non-empty list; got {json_type(value)}"
                              f"{' (empty)' if value == [] else ''}.")
    if len(value) > limit:
        raise BadRequest(413, f"'{key}' holds {len(value)} items; at most {limit} per request "
                              "(--max_texts_per_request): split it.")
    for i, item in enumerate(value):
        if kind and not isinstance(item, kind):
            raise BadRequest(422, f"'{key}'[{i}] must be {json_type(kind())}; got {json_type(item)}.")
    return value


def with_text(texts, key):
    """`texts`, or BadRequest naming the first that holds nothing to score."""
    for i, text in enumerate(texts):
        if not text.strip():
            raise BadRequest(422, f"'{key}'[{i}] holds no text (empty, or only whitespace or padding): there is "
                                  "nothing to score; remove it.")
    return texts


class Texts:
    """Request bodies -> the texts to score, made as training makes them (data/inputs.py `ModelInputs`):
    texts and prompt + answer get the end-of-conversation text, conversations are checked by training's rules
    and rendered with the chat template.

    Built once at start-up, where it calls the tokenizer; the request handlers never do (the batching
    thread owns the Rust tokenizer)."""

    def __init__(self, inputs, limit):
        self.inputs, self.render, self.limit = inputs, inputs.renderer, limit
        self.ends = QueryEnds(inputs.tokenizer, self.render, inputs.settings.end_of_conversation_token)

    def score(self, body):
        """/score: one of {"texts"}, {"prompts", "answers"} or {"conversations"}."""
        layout = SCORE_BODIES.get(frozenset(body))
        if layout is None:
            raise BadRequest(422, "send exactly one of {\"texts\": [...]}, {\"prompts\": [...], \"answers\": [...]} "
                                  f"or {{\"conversations\": [[messages]]}}; got keys {sorted(body)}.")
        if layout == "texts":
            return [self.inputs.answer_text("", text) for text in with_text(items_of(body, "texts", self.limit, str),
                                                                            "texts")]
        if layout == "prompts":
            prompts, answers = items_of(body, "prompts", self.limit, str), items_of(body, "answers", self.limit, str)
            if len(prompts) != len(answers):
                raise BadRequest(422, f"'prompts' has {len(prompts)} items but 'answers' has {len(answers)}.")
            return [self.inputs.answer_text("", text) for text in with_text([p + a for p, a in zip(prompts, answers)],
                                                                            "prompts")]
        conversations = items_of(body, "conversations", self.limit)
        return [self.conversation(messages, i) for i, messages in enumerate(conversations)]

    def conversation(self, messages, index):
        if not self.render.template:
            raise BadRequest(422, "this model's tokenizer has no chat template, so conversations cannot be "
                                  "rendered: send {\"texts\": [...]} written the way the model was trained.")
        try:  # training's checks (roles, non-empty turns, ends with the assistant's answer) and rendering
            return self.inputs.conversation_text("", messages, f"conversations[{index}]")
        except RowError as error:
            raise BadRequest(422, str(error)) from None

    def classify(self, body):
        """/classify (vLLM's): "input", a text or a list of texts, each scored as a /score text."""
        unknown = sorted(set(body) - set(CLASSIFY_FIELDS))
        if unknown:
            raise BadRequest(422, f"/classify does not read {unknown}; its fields are {list(CLASSIFY_FIELDS)}.")
        if not isinstance(body.get("model"), (str, type(None))):
            raise BadRequest(422, f"'model' must be a string; got {json_type(body['model'])}.")
        use_activation(body)
        if isinstance(body.get("input"), str):
            texts = with_text([body["input"]], "input")
        elif "input" in body and not isinstance(body["input"], list):
            raise BadRequest(422, "'input' must be a text or a non-empty list of texts; got "
                                  f"{json_type(body['input'])}.")
        else:
            texts = with_text(items_of(body, "input", self.limit, str), "input")
        return [self.inputs.answer_text("", text) for text in texts]

    def get_reward(self, body):
        """/get_reward (OpenRLHF): {"query": [...]}, each decoded with its special tokens and padding."""
        queries = with_text([self.ends(q) for q in items_of(body, "query", self.limit, str)], "query")
        return [self.inputs.answer_text("", query) for query in queries]


def use_activation(body):
    """/classify's activation flag: `use_activation`, or `activation` (vLLM's earlier name, which verl sends).
    Absent or null: true, vLLM's default for a one-label classifier (its sigmoid)."""
    given = {key: body[key] for key in ("use_activation", "activation") if body.get(key) is not None}
    for key, value in given.items():
        if not isinstance(value, bool):
            raise BadRequest(422, f"'{key}' must be true, false or null; got {json_type(value)}.")
    if len(set(given.values())) > 1:
        raise BadRequest(422, "'use_activation' and 'activation' disagree; send one of them.")
    return next(iter(given.values()), True)


def sigmoid(x):
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


async def read_json(request, max_bytes):
    """The request's JSON object (`parse_json`), or BadRequest 413 past `max_bytes`."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise BadRequest(413, f"body of {declared} bytes is over the {max_bytes}-byte limit (--max_body_bytes).")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise BadRequest(413, f"body is over the {max_bytes}-byte limit (--max_body_bytes).")
    return parse_json(bytes(body))


class QueryEnds:
    """A raw query as the text training would have scored: OpenRLHF decodes prompt + response with their
    special tokens, padding runs included (left-padded prompts, right-padded responses).

    As OpenRLHF's serve_rm, runs of special texts are stripped from both ends: PAD, EOS, BOS, the
    end-of-conversation text, and every other special token a rendered conversation does not hold (e.g.
    OPT's own `<pad>`, which DeepSpeed-Chat's PAD = EOS replaced). Then what training's texts carry at
    each end goes back: for a model trained on rendered conversations, the template's special start and
    the text it writes after the last answer (`<|eot_id|>`, `</s>`, ChatML's `<|im_end|>\n`: the last_token
    rule reads the score there); nothing for plain texts (the tokenizer adds its BOS, and the
    end-of-conversation text is appended after).
    """

    def __init__(self, tokenizer, render, end_of_conversation_token):
        chat = bool(render.template) and not end_of_conversation_token  # data/pairs.py: no eot after a template
        rendered = render(PROBE) if chat else ""
        answer = PROBE[-1]["content"]
        after = rendered[rendered.rindex(answer) + len(answer):] if chat else ""
        specials = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
        named = {tokenizer.pad_token, tokenizer.eos_token, tokenizer.bos_token, end_of_conversation_token, after}
        tokens = named | {t for t in specials if t not in rendered and t != tokenizer.unk_token}
        self.tokens = sorted((t for t in tokens if t), key=len, reverse=True)  # longest first: "</s>" before "s>"
        self.head, self.tail = rendered[:self.core(rendered)[0]], after

    def core(self, text):
        """(start, end) of `text` without the runs of special texts at its ends."""
        start, end = 0, len(text)
        while token := next((t for t in self.tokens if text.startswith(t, start, end)), None):
            start += len(token)
        while token := next((t for t in self.tokens if text.endswith(t, start, end)), None):
            end -= len(token)
        return start, end

    def __call__(self, query):
        start, end = self.core(query)
        return self.head + query[start:end] + self.tail if end > start else ""


# ---- the app ------------------------------------------------------------------------------------

# the exported classifier's one label (export_hf.py, num_labels=1), as vLLM names it from the config's id2label
LABEL = "LABEL_0"


def build_app(scorer, batcher, args):
    import asyncio
    import contextlib
    from concurrent.futures import ThreadPoolExecutor

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    counts = {"accepted": 0, "answered": 0, "ok": 0}
    info = server_info(scorer, batcher, args)
    reader = Texts(ModelInputs(scorer.tokenizer, scorer.model.settings, scorer.max_seq_len),
                   args.max_texts_per_request)
    tokenizing = ThreadPoolExecutor(1, thread_name_prefix="tokenizer")  # off the event loop; one thread
    started = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        batcher.stop()
        tokenizing.shutdown()
        print(f"serve: stopped after answering {counts['answered']} of {counts['accepted']} accepted "
              f"scoring requests ({counts['ok']} with rewards)", file=sys.stderr, flush=True)

    app = FastAPI(title="reward model", lifespan=lifespan)

    async def answer(request, texts_of, respond):
        """Read the body, make its texts (`texts_of`), score them; `respond(body, rewards, token count)`
        gives the JSON answer. Texts cut at max_seq_len are listed in the X-Truncated-Inputs header."""
        counts["accepted"] += 1
        headers = {}
        try:
            body = await read_json(request, args.max_body_bytes)
            texts = texts_of(body)
            rows, cut = await asyncio.get_running_loop().run_in_executor(tokenizing, scorer.encode, texts)
            rewards = await batcher.score(rows)
            status, content = 200, respond(body, rewards, cut, sum(len(row) for row in rows))
            if any(cut):
                headers["X-Truncated-Inputs"] = ",".join(str(i) for i, c in enumerate(cut) if c)
            counts["ok"] += 1
        except BadRequest as error:
            status, content = error.status, {"detail": str(error)}
        except Exception as error:  # this request only: the server keeps serving
            traceback.print_exc()
            status, content = 500, {"detail": f"scoring failed: {type(error).__name__}: {error}"}
        counts["answered"] += 1
        return JSONResponse(content, status_code=status, headers=headers)

    def score_texts(body):
        wants_heads(body)  # a bad "heads" is refused before anything is scored
        return reader.score({key: value for key, value in body.items() if key != "heads"})

    @app.post("/score")
    async def score(request: Request):
        return await answer(request, score_texts,
                            lambda body, scored, cut, tokens: {**score_fields(scored, wants_heads(body)),
                                                               "truncated": [i for i, c in enumerate(cut) if c]})

    @app.post("/get_reward")
    async def get_reward(request: Request):
        """OpenRLHF's remote reward model protocol: its client also sends prompts and labels (ignored)."""
        return await answer(request, reader.get_reward,
                            lambda body, scored, cut, tokens: {"rewards": rewards_of(scored),
                                                               "scores": rewards_of(scored),
                                                               "extra_logs": {"truncated": [float(c) for c in cut]}})

    @app.post("/classify")
    @app.post("/v1/classify")
    async def classify(request: Request):
        """vLLM's classification API (SGLang's path too), as verl's reward loop calls it."""
        return await answer(request, reader.classify,
                            lambda body, scored, cut, tokens: classification(args.model_dir, rewards_of(scored),
                                                                             use_activation(body), tokens))

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": args.model_dir, "object": "model", "created": started,
                                            "owned_by": "serve.py", "root": info["model"], "parent": None,
                                            "max_model_len": scorer.max_seq_len}]}

    @app.get("/health")
    async def health():
        return {"status": "ok", "requests": counts["answered"], **batcher.stats}

    @app.get("/info")
    async def get_info():
        return info

    return app


def wants_heads(body):
    """/score's optional "heads" field: true asks for each value head's score."""
    value = body.get("heads", False)
    if not isinstance(value, bool):
        raise BadRequest(422, f"'heads' must be true or false; got {json_type(value)}.")
    return value


def rewards_of(scored):
    """The reward of each text the Scorer scored (an ensemble's: the mean of its heads; an attribute model's:
    attribute_weights . its attributes)."""
    return [s["reward"] if isinstance(s, dict) else s for s in scored]


def score_fields(scored, heads):
    """/score's fields: "rewards"; for an ensemble "uncertainty" and "conservative" (when the model has a
    conservative_lambda); for an attribute model "attributes" ({name: value} per text); with `heads`, "heads"
    (one list per text; one head's is [reward])."""
    fields = {"rewards": rewards_of(scored)}
    if scored and isinstance(scored[0], dict):
        fields.update({key: [s[key] for s in scored] for key in ("uncertainty", "conservative", "attributes")
                       if key in scored[0]})
    if heads:
        fields["heads"] = [s["heads"] if isinstance(s, dict) else [s] for s in scored]
    return fields


def classification(model_name, rewards, activation, tokens):
    """vLLM's /classify response for a one-label classifier: `probs` holds the reward, or its sigmoid."""
    probs = [sigmoid(r) for r in rewards] if activation else rewards
    return {"id": f"classify-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()), "model": model_name,
            "data": [{"index": i, "label": LABEL, "probs": [p], "num_classes": 1} for i, p in enumerate(probs)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0,
                      "prompt_tokens_details": None}}


def server_info(scorer, batcher, args):
    import torch
    model = scorer.model
    n = model.num_padding_at_beginning
    return {"model": os.path.abspath(args.model_dir), "dtype": str(model.v_head.weight.dtype).removeprefix("torch."),
            "device": str(model.v_head.weight.device), "threads": torch.get_num_threads(),
            "max_seq_len": scorer.max_seq_len,
            "num_padding_at_beginning": n, "pad_token_id": model.PAD_ID,
            "end_token_rule": model.end_token_rule,
            "end_token_rule_meaning": "reward at the last attended token" if model.end_token_rule == LAST_TOKEN
            else (f"reward at the token before pad token number {n + 1} (pad id {model.PAD_ID}; "
                  f"num_padding_at_beginning={n} skips a pad-equal BOS), or at the last token"),
            "end_of_conversation_token": model.end_of_conversation_token,
            "reward_mean": model.reward_stats.get("reward_mean"), "reward_std": model.reward_stats.get("reward_std"),
            "num_heads": model.settings.head.num_heads, "conservative_lambda": model.settings.head.conservative_lambda,
            "attributes": list(model.settings.head.attributes),
            "attribute_weights": list(model.settings.head.attribute_weights),
            "normalize": args.normalize, "center": args.center,
            "chat_template": bool(getattr(scorer.tokenizer, "chat_template", None)),
            "max_batch_tokens": args.max_batch_tokens, "forward_cost_tokens": batcher.forward_cost,
            "max_wait_ms": args.max_wait_ms,
            "max_texts_per_request": args.max_texts_per_request, "max_body_bytes": args.max_body_bytes}


def run(args):
    import uvicorn

    from utils.errors import UserError
    for flag in ("max_batch_tokens", "max_texts_per_request", "max_body_bytes"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag} must be at least 1; got {getattr(args, flag)}.")
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    scorer = load_scorer(args)
    cost = scorer.forward_cost(args.max_batch_tokens)
    batcher = Batcher(scorer, args.max_batch_tokens, args.max_wait_ms / 1000, cost)
    app = build_app(scorer, batcher, args)
    print(f"serve: {args.model_dir} ({json.dumps(server_info(scorer, batcher, args))})", file=sys.stderr, flush=True)
    # uvicorn stops accepting on SIGTERM/SIGINT, finishes the requests it holds, runs the lifespan exit,
    # then re-raises the signal it caught: these handlers make that last step a no-op, so we exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=args.access_log)


def main(argv=None):
    from utils.errors import exit_on_user_error
    args = parse_args(argv)
    exit_on_user_error(run, args, debug=args.debug)


if __name__ == "__main__":
    main()
