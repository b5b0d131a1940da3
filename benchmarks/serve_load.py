"""Load test of the scoring server: batching against one text per forward, offline scoring and Hugging Face.

    python benchmarks/serve_load.py --threads 1                    # random-weight opt-125m-shape model
    python benchmarks/serve_load.py --threads 1 --dtype bf16       # the same model served in bf16
    python benchmarks/serve_load.py --model_dir OUT --threads 1    # a trained reward model

Two servers run the same model on loopback: `batching` (the flags given) and `one-at-a-time` (each text in
its own forward as soon as it arrives: --max_batch_tokens 1 --max_wait_ms 0). Texts are prompt + answer with
HH-like lengths (benchmarks/hh_like.py). Each round gives each mode new texts, the same for both servers,
the servers taking turns (batching first in even rounds, one-at-a-time first in odd ones), so load from
other work on the machine falls on both alike:
- one text, `--clients` clients: verl's payload (`/classify`, one text per request), as an RL loop's
  workers send it;
- lone client: such requests from one client, one after another (batching must not cost it);
- rollout: `--rollout_clients` clients, each sending one /score request of `--rollout_texts` texts;
- offline: in this process, on the one-text mode's texts: `model.scoring.score_texts`, `--offline_batch`
  texts per call in their order; `score_all` (length-sorted batches, as evaluate.py --score); and Hugging
  Face `AutoModelForSequenceClassification` on the model exported by export_hf.py, right-padded batches of
  `--offline_batch` in their order (what a user of the export would write).
"""
import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from benchmarks import hh_like
from benchmarks.bench import build_model
from model.tiny import OPT_SHAPES

ONE_AT_A_TIME = ["--max_batch_tokens", "1", "--max_wait_ms", "0"]
SERVERS = ("batching", "one-at-a-time")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model_dir", default=None, help="A reward model folder to serve (default: build one).")
    parser.add_argument("--model_shape", choices=sorted(OPT_SHAPES), default="125m",
                        help="OPT shape of the random-weight model built when --model_dir is not given.")
    load = parser.add_argument_group("load")
    load.add_argument("--rounds", type=int, default=3, help="Rounds; every mode runs once per round, on new texts.")
    load.add_argument("--clients", type=int, default=16, help="Concurrent clients of the one-text mode.")
    load.add_argument("--texts", type=int, default=32,
                      help="Texts per round in the one-text mode, and in the lone-client one.")
    load.add_argument("--rollout_clients", type=int, default=8, help="Concurrent clients of the rollout mode.")
    load.add_argument("--rollout_texts", type=int, default=32, help="Texts per rollout request.")
    load.add_argument("--offline_batch", type=int, default=16, help="Texts per offline call (ours and HF's).")
    server = parser.add_argument_group("servers (both get these)")
    server.add_argument("--threads", type=int, default=None, help="torch CPU threads (this process's too).")
    server.add_argument("--dtype", default="auto", help="Weights dtype (auto: the saved fp32).")
    server.add_argument("--max_seq_len", type=int, default=512, help="Tokens per text.")
    server.add_argument("--max_batch_tokens", type=int, default=2048, help="The batching server's.")
    server.add_argument("--max_wait_ms", type=float, default=0.0, help="The batching server's.")
    parser.add_argument("--seed", type=int, default=1234, help="Seed for the texts and the random weights.")
    parser.add_argument("--workdir", default=None, help="Folder for the built and exported models (default: temp).")
    parser.add_argument("--json", default=None, help="Write the results to this JSON file.")
    return parser.parse_args(argv)


def build_reward_model(folder, shape, rows, seed):
    """A random-weight OPT of `shape` with a BPE tokenizer trained on `rows`, saved as main.py saves."""
    from model.io import save_hf_model
    tokenizer = hh_like.build_tokenizer(os.path.join(folder, "tokenizer"), rows)
    model = build_model(shape, tokenizer, "sdpa", seed).eval()
    save_hf_model(model, tokenizer, folder, zero_stage=0)
    return folder


def start_server(model_dir, flags, log_path):
    """serve.py on a free loopback port; returns (process, url) once /health answers."""
    import httpx
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, os.path.join(ROOT, "evaluation_scripts", "serve.py"), model_dir, "--port", str(port),
               *flags]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if process.poll() is not None:
            sys.exit(f"error: the server exited with status {process.returncode}; its log: {log_path}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    sys.exit(f"error: the server did not answer /health in 2 minutes; its log: {log_path}")


def server_flags(args, name):
    flags = ["--max_seq_len", str(args.max_seq_len), "--dtype", args.dtype]
    flags += ["--threads", str(args.threads)] if args.threads else []
    if name == "one-at-a-time":
        return flags + ONE_AT_A_TIME
    return flags + ["--max_batch_tokens", str(args.max_batch_tokens), "--max_wait_ms", str(args.max_wait_ms)]


async def send_all(url, requests, clients):
    """`clients` concurrent clients send `requests` ((path, body) pairs) until none is left: (seconds,
    latency of each request)."""
    import httpx
    pending, latencies = iter(requests), []

    async def client(http):
        for path, body in pending:
            sent = time.perf_counter()
            response = await http.post(url + path, json=body)
            response.raise_for_status()
            latencies.append(time.perf_counter() - sent)
    async with httpx.AsyncClient(timeout=3600, limits=httpx.Limits(max_connections=clients)) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        return time.perf_counter() - start, latencies


def served(url, requests, clients):
    """One phase against a server: texts, seconds, latencies and the server's forward counters over it."""
    import httpx
    before = httpx.get(url + "/health").json()
    seconds, latencies = asyncio.run(send_all(url, requests, clients))
    after = httpx.get(url + "/health").json()
    texts = sum(len(body["texts"]) if "texts" in body else 1 for _, body in requests)
    return {"texts": texts, "seconds": seconds, "latencies": latencies,
            **{key: after[key] - before[key] for key in ("forwards", "forward_s", "forward_cpu_s")}}


def one_text_requests(texts):
    return [("/classify", {"model": "rm", "input": text, "activation": False}) for text in texts]


class Offline:
    """Offline scoring in this process: our `score_texts` on the reward model, and Hugging Face's
    AutoModelForSequenceClassification on the export, each on batches of `batch` texts in their order."""

    def __init__(self, model_dir, hf_dir, args):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from data.inputs import ModelInputs
        from evaluation_scripts.export_hf import main as export
        from evaluation_scripts.serve import DTYPES
        from model.create import build_tokenizer, load_reward_model
        dtype = DTYPES[args.dtype] and getattr(torch, DTYPES[args.dtype])
        self.model = load_reward_model(model_dir, dtype=dtype).eval()
        self.tokenizer = build_tokenizer(self.model.settings, source=model_dir)
        self.inputs = ModelInputs(self.tokenizer, self.model.settings, args.max_seq_len)
        export([model_dir, hf_dir, "--overwrite"] + (["--dtype", args.dtype] if dtype else []))
        self.hf = AutoModelForSequenceClassification.from_pretrained(hf_dir).eval()
        self.hf_tokenizer = AutoTokenizer.from_pretrained(hf_dir)
        self.batch, self.max_seq_len = args.offline_batch, args.max_seq_len

    def ours(self, texts):
        """score_texts on the batches Hugging Face gets (packed where the model allows)."""
        from model.scoring import score_texts
        texts = [self.inputs.answer_text("", text) for text in texts]
        return [r for s in range(0, len(texts), self.batch)
                for r in score_texts(self.model, self.tokenizer, texts[s:s + self.batch], self.max_seq_len).tolist()]

    def ours_sorted(self, texts):
        """As evaluate.py --score scores a file: all texts encoded, then score_all's length-sorted batches."""
        from model.scoring import score_all
        return score_all(self.model, self.inputs.encode([self.inputs.answer_text("", t) for t in texts])).tolist()

    def huggingface(self, texts):
        import torch
        texts = [self.inputs.answer_text("", text) for text in texts]
        rewards = []
        with torch.no_grad():
            for s in range(0, len(texts), self.batch):
                batch = self.hf_tokenizer(texts[s:s + self.batch], padding=True, truncation=True,
                                          max_length=self.max_seq_len, return_tensors="pt")
                rewards += self.hf(**batch).logits[:, 0].float().tolist()
        return rewards

    def timed(self, score, texts):
        start = time.perf_counter()
        rewards = score(texts)
        return {"texts": len(texts), "seconds": time.perf_counter() - start}, rewards


def run_round(r, urls, offline, texts, args):
    """Every mode once on this round's texts, the two servers' phases next to each other. Each mode gets its
    own texts: a server that has seen a text's shape before may reuse its kernels (bf16 on CPU)."""
    order = SERVERS if r % 2 == 0 else SERVERS[::-1]
    one_text, lone, rollout = texts[:args.texts], texts[args.texts:2 * args.texts], texts[2 * args.texts:]
    rollouts = [("/score", {"texts": rollout[s:s + args.rollout_texts]})
                for s in range(0, len(rollout), args.rollout_texts)]
    phases = {}
    for mode, requests, clients in [("one text", one_text_requests(one_text), args.clients),
                                    ("lone client", one_text_requests(lone), 1),
                                    ("rollout", rollouts, args.rollout_clients)]:
        for name in order:
            phases[(mode, name)] = served(urls[name], requests, clients)
    phases[("offline", "ours (score_texts)")], ours = offline.timed(offline.ours, one_text)
    phases[("offline", "ours sorted (score_all)")], _ = offline.timed(offline.ours_sorted, one_text)
    phases[("offline", "HF padded")], theirs = offline.timed(offline.huggingface, one_text)
    phases[("offline", "HF padded")]["max_abs_difference"] = max(abs(a - b) for a, b in zip(ours, theirs))
    return phases


def summarise(rounds):
    """Phases of every round -> per (mode, server): texts/s, p50/p99 latency, texts per forward, compute share."""
    table = {}
    for key in rounds[0]:
        runs = [phases[key] for phases in rounds]
        texts, seconds = sum(r["texts"] for r in runs), sum(r["seconds"] for r in runs)
        row = {"texts": texts, "seconds": seconds, "texts_per_s": texts / seconds}
        latencies = sorted(t for r in runs for t in r.get("latencies", []))
        if latencies:
            forwards = sum(r["forwards"] for r in runs)
            row.update(p50_ms=1000 * latencies[len(latencies) // 2],
                       p99_ms=1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
                       texts_per_forward=texts / forwards,
                       busy_share=sum(r["forward_s"] for r in runs) / seconds,
                       forward_cpu_share=sum(r["forward_cpu_s"] for r in runs) / sum(r["forward_s"] for r in runs))
        if "max_abs_difference" in runs[0]:
            row["max_abs_difference"] = max(r["max_abs_difference"] for r in runs)
        table[" | ".join(key)] = row
    return table


def targets(table, args):
    """The three ratios the serving goals are stated in."""
    def rate(mode, name):
        return table[f"{mode} | {name}"]["texts_per_s"]
    return {f"one text, {args.clients} clients: batching / one-at-a-time texts/s (goal >= 1.4)":
            rate("one text", "batching") / rate("one text", "one-at-a-time"),
            "lone client: batching / one-at-a-time p50 latency (goal <= 1.1)":
            table["lone client | batching"]["p50_ms"] / table["lone client | one-at-a-time"]["p50_ms"],
            f"rollout, {args.rollout_clients} x {args.rollout_texts}: batching / one-at-a-time texts/s (goal >= 1.5)":
            rate("rollout", "batching") / rate("rollout", "one-at-a-time")}


def print_table(table, ratios):
    print(f"{'mode | server':<34} {'texts':>6} {'s':>7} {'texts/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'texts/fwd':>9} {'busy':>5} {'cpu/wall':>8}")
    for key, row in table.items():
        served_columns = (f"{row['p50_ms']:>8.0f} {row['p99_ms']:>8.0f} {row['texts_per_forward']:>9.1f} "
                          f"{row['busy_share']:>5.2f} {row['forward_cpu_share']:>8.2f}" if "p50_ms" in row
                          else f"{'':>8} {'':>8} {'':>9} {'':>5} {'':>8}")
        extra = f"  (max |ours - HF| {row['max_abs_difference']:.1e})" if "max_abs_difference" in row else ""
        print(f"{key:<34} {row['texts']:>6} {row['seconds']:>7.1f} {row['texts_per_s']:>8.2f} {served_columns}{extra}")
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}")


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    workdir = args.workdir or tempfile.mkdtemp(prefix="serve-load-")
    per_round = 2 * args.texts + args.rollout_clients * args.rollout_texts
    rows = hh_like.make_pairs(max(per_round * args.rounds, 2000), seed=args.seed)
    texts = [row["prompt"] + row["chosen"] for row in rows]
    model_dir = args.model_dir
    if model_dir is None:
        model_dir = build_reward_model(os.path.join(workdir, "model"), args.model_shape, rows, args.seed)
        print(f"serve_load: built a random-weight opt-{args.model_shape}-shape reward model in {model_dir}")
    offline = Offline(model_dir, os.path.join(workdir, "hf"), args)
    processes, urls = {}, {}
    try:
        for name in SERVERS:
            processes[name], urls[name] = start_server(model_dir, server_flags(args, name),
                                                       os.path.join(workdir, f"serve_{name}.log"))
            asyncio.run(send_all(urls[name], one_text_requests(texts[-4:]), 2))  # warm-up, not counted
        rounds = []
        for r in range(args.rounds):
            rounds.append(run_round(r, urls, offline, texts[r * per_round:(r + 1) * per_round], args))
            print(f"serve_load: round {r + 1} of {args.rounds} done, load average {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        for process in processes.values():
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=120)
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    table = summarise(rounds)
    ratios = targets(table, args)
    print_table(table, ratios)
    load_end = os.getloadavg()
    print(f"load average {load_start[0]:.1f} at start, {load_end[0]:.1f} at end; {args.threads or 'default'} torch "
          f"threads; dtype {args.dtype}")
    result = {"command": " ".join(["python"] + sys.argv), "table": table, "ratios": ratios,
              "load_average_start": load_start, "load_average_end": load_end, "args": vars(args)}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
