"""Load test of the scoring server: N concurrent clients against the same texts sent one by one.

    python benchmarks/serve_load.py                           # random-weight opt-125m-shape model, served here
    python benchmarks/serve_load.py --model_dir OUT           # serve a trained reward model
    python benchmarks/serve_load.py --url http://HOST:PORT    # measure a server that is already running

Each request carries one text (prompt + answer, HH-like lengths from benchmarks/hh_like.py), as an RL
loop's workers send them. The batched phase runs `--clients` concurrent clients; the sequential phase
sends the same texts one request at a time. Both stop at `--texts` texts or `--duration` seconds.
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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--url", default=None, help="A running server to measure (nothing is started).")
    target.add_argument("--model_dir", default=None, help="A reward model folder to serve (default: build one).")
    parser.add_argument("--model_shape", choices=sorted(OPT_SHAPES), default="125m",
                        help="OPT shape of the random-weight model built when neither --url nor --model_dir is given.")
    parser.add_argument("--texts", type=int, default=256, help="Texts per phase (at most).")
    parser.add_argument("--duration", type=float, default=60.0, help="Seconds per phase (at most).")
    parser.add_argument("--clients", type=int, default=16, help="Concurrent clients in the batched phase.")
    parser.add_argument("--max_batch_tokens", type=int, default=8192, help="Passed to the server it starts.")
    parser.add_argument("--max_padding", type=float, default=0.25, help="Passed to the server it starts.")
    parser.add_argument("--threads", type=int, default=None, help="Passed to the server it starts (torch threads).")
    parser.add_argument("--max_wait_ms", type=float, default=10.0, help="Passed to the server it starts.")
    parser.add_argument("--dtype", default="auto", help="Passed to the server it starts (auto: the saved fp32).")
    parser.add_argument("--max_seq_len", type=int, default=512, help="Passed to the server it starts.")
    parser.add_argument("--seed", type=int, default=1234, help="Seed for the texts and the random weights.")
    parser.add_argument("--workdir", default=None, help="Folder for the built model (default: a temp folder).")
    parser.add_argument("--json", default=None, help="Write the results to this JSON file.")
    return parser.parse_args(argv)


def build_reward_model(folder, shape, rows, seed):
    """A random-weight OPT of `shape` with a BPE tokenizer trained on `rows`, saved as main.py saves."""
    from model.io import save_hf_model
    tokenizer = hh_like.build_tokenizer(os.path.join(folder, "tokenizer"), rows)
    model = build_model(shape, tokenizer, "sdpa", seed).eval()
    save_hf_model(model, tokenizer, folder, zero_stage=0)
    return folder


def start_server(model_dir, args, log_path):
    """serve.py on a free loopback port; returns (process, url) once /health answers."""
    import httpx
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, os.path.join(ROOT, "evaluation_scripts", "serve.py"), model_dir, "--port", str(port),
               "--max_batch_tokens", str(args.max_batch_tokens), "--max_wait_ms", str(args.max_wait_ms),
               "--max_padding", str(args.max_padding), "--max_seq_len", str(args.max_seq_len), "--dtype", args.dtype]
    command += ["--threads", str(args.threads)] if args.threads else []
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


async def run_phase(url, texts, clients, duration):
    """`clients` concurrent clients, one text per request, until the texts or the time run out."""
    import httpx
    pending = iter(range(len(texts)))
    latencies = []
    deadline = time.perf_counter() + duration

    async def client(http):
        for i in pending:
            if time.perf_counter() > deadline:
                return
            sent = time.perf_counter()
            response = await http.post(url + "/score", json={"texts": [texts[i]]})
            response.raise_for_status()
            latencies.append(time.perf_counter() - sent)
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        seconds = time.perf_counter() - start
    latencies.sort()
    return {"texts": len(latencies), "seconds": seconds, "texts_per_s": len(latencies) / seconds,
            "p50_ms": 1000 * latencies[len(latencies) // 2],
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]}


def measure(url, texts, args):
    import httpx
    asyncio.run(run_phase(url, texts[:4], 1, args.duration))  # warm-up, not counted
    forwards_before = httpx.get(url + "/health").json()["forwards"]
    batched = asyncio.run(run_phase(url, texts, args.clients, args.duration))
    batched["forwards"] = httpx.get(url + "/health").json()["forwards"] - forwards_before
    sequential = asyncio.run(run_phase(url, texts, 1, args.duration))
    return {"batched": batched, "sequential": sequential, "info": httpx.get(url + "/info").json(),
            "speedup": batched["texts_per_s"] / sequential["texts_per_s"]}


def main(argv=None):
    args = parse_args(argv)
    load_start = os.getloadavg()
    workdir = args.workdir or tempfile.mkdtemp(prefix="serve-load-")
    rows = hh_like.make_pairs(max(args.texts, 2000), seed=args.seed)
    texts = [row["prompt"] + row["chosen"] for row in rows[:args.texts]]
    process, url = None, args.url
    if url is None:
        model_dir = args.model_dir
        if model_dir is None:
            model_dir = build_reward_model(os.path.join(workdir, "model"), args.model_shape, rows, args.seed)
            print(f"serve_load: built a random-weight opt-{args.model_shape}-shape reward model in {model_dir}")
        process, url = start_server(model_dir, args, os.path.join(workdir, "serve.log"))
    try:
        result = measure(url, texts, args)
    finally:
        if process is not None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=120)
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    result.update(command=" ".join(["python"] + sys.argv), clients=args.clients,
                  load_average_start=load_start, load_average_end=os.getloadavg())
    for name in ("batched", "sequential"):
        r = result[name]
        print(f"{name:<10} {r['texts']} texts in {r['seconds']:.1f} s = {r['texts_per_s']:.2f} texts/s | "
              f"latency p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms")
    print(f"batched ({args.clients} clients, {result['batched']['forwards']} forwards) / sequential: "
          f"{result['speedup']:.2f}x; load average {load_start[0]:.1f} at start, {result['load_average_end'][0]:.1f} at end")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
