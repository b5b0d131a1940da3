"""Serve a trained reward model over HTTP, batching concurrent requests into one forward at a time.

    python evaluation_scripts/serve.py OUT --port 8000
    curl -s localhost:8000/score -H 'Content-Type: application/json' \\
         -d '{"prompts": ["Human: Hi! Assistant:"], "answers": [" Hello, how can I help?"]}'

POST /score       {"texts": [...]} | {"prompts": [...], "answers": [...]} | {"conversations": [[{"role", "content"}, ...]]}
                  -> {"rewards": [...], "truncated": [indices of texts cut at max_seq_len]}
POST /get_reward  {"query": [...]} -> {"rewards": [...], "scores": [...], "extra_logs": {...}}  (OpenRLHF's remote RM)
GET  /health, GET /info

Every text gets the model's end-of-conversation token appended and is scored by
`model.scoring.score_texts`, so rewards equal `evaluate.py OUT --score` for the same texts and dtype.
"""
import argparse
import json
import os
import signal
import sys
import traceback

from data.chat import ChatRenderer, RowError
from evaluation_scripts.batching import Batcher
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
    batching.add_argument("--max_batch_tokens", type=int, default=8192,
                          help="Padded tokens (rows x longest row) per forward; a longer single text runs alone.")
    batching.add_argument("--max_padding", type=float, default=0.25,
                          help="Largest share of a forward's tokens that may be padding: a shorter text that would "
                               "push it higher starts the next batch (1: only --max_batch_tokens cuts batches).")
    batching.add_argument("--max_wait_ms", type=float, default=10.0,
                          help="How long the first queued request waits for others to share its forward.")
    batching.add_argument("--max_texts_per_request", type=int, default=1024,
                          help="Requests with more texts get 413.")
    batching.add_argument("--max_body_bytes", type=int, default=16 * 2 ** 20,
                          help="Request bodies larger than this get 413.")
    parser.add_argument("--debug", action="store_true", help="Show Python tracebacks for user errors.")
    return parser.parse_args(argv)


# ---- scoring ------------------------------------------------------------------------------------

class Scorer:
    """Token lengths and rewards of texts; called from the batching thread only (the Rust tokenizer
    must not be used from two threads at once)."""

    def __init__(self, model, tokenizer, max_seq_len, shift=0.0, scale=1.0):
        self.model, self.tokenizer, self.max_seq_len = model, tokenizer, max_seq_len
        self.shift, self.scale = shift, scale

    def lengths(self, texts):
        """Untruncated token counts, as score_texts tokenises (special tokens included)."""
        return [len(ids) for ids in self.tokenizer(texts, verbose=False)["input_ids"]]

    def __call__(self, texts):
        from model.scoring import score_texts
        rewards = score_texts(self.model, self.tokenizer, texts, self.max_seq_len).tolist()
        return [(r - self.shift) / self.scale for r in rewards]


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

class BadRequest(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def string_list(body, key, limit, kind=str):
    """body[key] as a non-empty list of `kind` of at most `limit` items, else BadRequest."""
    value = body.get(key)
    if not isinstance(value, list) or not value:
        raise BadRequest(422, f"'{key}' must be a non-empty list; got {type(value).__name__}"
                              f"{' (empty)' if value == [] else ''}.")
    if len(value) > limit:
        raise BadRequest(413, f"'{key}' holds {len(value)} items; at most {limit} per request "
                              "(--max_texts_per_request): split it.")
    for i, item in enumerate(value):
        if not isinstance(item, kind):
            raise BadRequest(422, f"'{key}'[{i}] must be a {kind.__name__}; got {type(item).__name__}.")
    return value


def render_conversation(messages, tokenizer, where):
    """A list of {"role", "content"} messages as text, by the tokenizer's chat template."""
    if not messages:
        raise BadRequest(422, f"{where} holds no messages.")
    for i, message in enumerate(messages):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            raise BadRequest(422, f"{where}[{i}] must be an object with string 'role' and 'content'.")
    if not getattr(tokenizer, "chat_template", None):
        raise BadRequest(422, "this model's tokenizer has no chat template, so conversations cannot be "
                              "rendered: send {\"texts\": [...]} written the way the model was trained.")
    try:
        return ChatRenderer(tokenizer)(messages)  # exactly as training rendered its conversations
    except RowError as error:
        raise BadRequest(422, f"{where}: {error}")


def strip_special_ends(text, tokenizer, keep_eos=False):
    """Drop a leading BOS text and trailing PAD (and, unless `keep_eos`, EOS) texts: the tokenizer adds its
    own BOS, and the end-of-conversation token is appended after, so a query decoded with special tokens
    scores like the plain text. A chat model (last_token rule) keeps its EOS: its template ends turns with it."""
    bos = tokenizer.bos_token
    ends = [t for t in (tokenizer.pad_token, None if keep_eos else tokenizer.eos_token) if t]
    while bos and text.startswith(bos):
        text = text[len(bos):]
    while any(text.endswith(t) for t in ends):
        text = text[:-len(next(t for t in ends if text.endswith(t)))]
    return text


def score_texts_of(body, tokenizer, limit):
    """/score's body -> the texts to score (before the end-of-conversation token)."""
    given = [key for key in ("texts", "prompts", "conversations") if key in body]
    if len(given) != 1:
        raise BadRequest(422, "send exactly one of {\"texts\": [...]}, {\"prompts\": [...], \"answers\": [...]} "
                              f"or {{\"conversations\": [[messages]]}}; got keys {sorted(body)}.")
    if given == ["texts"]:
        return string_list(body, "texts", limit)
    if given == ["prompts"]:
        prompts, answers = string_list(body, "prompts", limit), string_list(body, "answers", limit)
        if len(prompts) != len(answers):
            raise BadRequest(422, f"'prompts' has {len(prompts)} items but 'answers' has {len(answers)}.")
        return [p + a for p, a in zip(prompts, answers)]
    conversations = string_list(body, "conversations", limit, kind=list)
    return [render_conversation(c, tokenizer, f"'conversations'[{i}]") for i, c in enumerate(conversations)]


async def read_json(request, max_bytes):
    """The request's JSON object, or BadRequest (413 past max_bytes, 400 if not JSON, 422 if not an object)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise BadRequest(413, f"body of {declared} bytes is over the {max_bytes}-byte limit (--max_body_bytes).")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise BadRequest(413, f"body is over the {max_bytes}-byte limit (--max_body_bytes).")
    try:
        data = json.loads(body)
    except ValueError as error:
        raise BadRequest(400, f"body is not valid JSON: {error}.")
    if not isinstance(data, dict):
        raise BadRequest(422, f"body must be a JSON object; got {type(data).__name__}.")
    return data


# ---- the app ------------------------------------------------------------------------------------

def build_app(scorer, batcher, args):
    import contextlib

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    counts = {"accepted": 0, "answered": 0, "ok": 0}
    eot = scorer.model.end_of_conversation_token
    info = server_info(scorer, args)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        batcher.stop()
        print(f"serve: stopped after answering {counts['answered']} of {counts['accepted']} accepted "
              f"scoring requests ({counts['ok']} with rewards)", file=sys.stderr, flush=True)

    app = FastAPI(title="reward model", lifespan=lifespan)

    async def answer(request, texts_of, respond):
        counts["accepted"] += 1
        try:
            texts = texts_of(await read_json(request, args.max_body_bytes))
            rewards, truncated = await batcher.score([text + eot for text in texts])
            status, content = 200, respond(rewards, truncated)
            counts["ok"] += 1
        except BadRequest as error:
            status, content = error.status, {"detail": str(error)}
        except Exception as error:  # this request only: the server keeps serving
            traceback.print_exc()
            status, content = 500, {"detail": f"scoring failed: {type(error).__name__}: {error}"}
        counts["answered"] += 1
        return JSONResponse(content, status_code=status)

    @app.post("/score")
    async def score(request: Request):
        return await answer(request, lambda body: score_texts_of(body, scorer.tokenizer, args.max_texts_per_request),
                            lambda rewards, truncated: {"rewards": rewards,
                                                        "truncated": [i for i, t in enumerate(truncated) if t]})

    @app.post("/get_reward")
    async def get_reward(request: Request):
        """OpenRLHF's remote reward model protocol: its client also sends prompts and labels (ignored)."""
        def texts_of(body):
            keep_eos = scorer.model.end_token_rule == LAST_TOKEN
            return [strip_special_ends(q, scorer.tokenizer, keep_eos)
                    for q in string_list(body, "query", args.max_texts_per_request)]
        return await answer(request, texts_of,
                            lambda rewards, truncated: {"rewards": rewards, "scores": rewards,
                                                        "extra_logs": {"truncated": [float(t) for t in truncated]}})

    @app.get("/health")
    async def health():
        return {"status": "ok", "requests": counts["answered"], **batcher.stats}

    @app.get("/info")
    async def get_info():
        return info

    return app


def server_info(scorer, args):
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
            "normalize": args.normalize, "center": args.center,
            "chat_template": bool(getattr(scorer.tokenizer, "chat_template", None)),
            "max_batch_tokens": args.max_batch_tokens, "max_padding": args.max_padding,
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
    if not 0 <= args.max_padding <= 1:
        raise UserError(f"--max_padding is a share of a batch's tokens, from 0 to 1; got {args.max_padding}.")
    batcher = Batcher(scorer, args.max_batch_tokens, args.max_wait_ms / 1000, args.max_padding)
    app = build_app(scorer, batcher, args)
    print(f"serve: {args.model_dir} ({json.dumps(server_info(scorer, args))})", file=sys.stderr, flush=True)
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
