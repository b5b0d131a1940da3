"""Training-speed benchmark: this project's data path and loss against DeepSpeed-Chat's, side by side.

This measures the data path and the loss inside one process with a hand-written bf16 trainer
(`Trainer` below), not main.py's DeepSpeed engine; benchmarks/side_by_side.py runs DeepSpeed-Chat's
actual script beside main.py end to end. Longer than most modules because it is one benchmark whose
steps read best in order; measuring lives in measure.py, the figures and the table in report.py.

    python benchmarks/bench.py --json bench_125m.json                      # opt-125m shape (default)
    python benchmarks/bench.py --model_shape 350m --json bench_350m.json   # the card's opt-350m shape

One command, one model shape, one dataset:
1. Data: synthetic HH-harmless-like pairs (benchmarks/hh_like.py: HH harmless-split word lengths) and a 16k
   byte-level BPE tokenizer trained on them (~1.3 tokens a word, reported), all offline.
2. Data preparation, each path in a fresh spawned process so that its peak RSS is its own:
   - project: `data.build_pair_datasets` (batched fast tokenisation, unpadded Arrow cache);
   - baseline: DeepSpeed-Chat's per-sample tokenisation padded to max_seq_len, torch.save + torch.load
     (benchmarks/deepspeed_chat.py);
   then one epoch of batches as the trainer reads them, and one training step on the path's longest
   batch, so the peak covers data + model + optimizer + activations. A third fresh process
   times the Rust tokenizer alone over the text once (every prompt and answer, one batch call): no
   path that gives the tokenizer's exact ids can be faster, so baseline time / that time is the
   ceiling of tokenize_speedup on this data and machine.
3. Training throughput, in this process on one model: three paths take turns micro batch by micro
   batch (other load on the machine slows them alike): the baseline (rows padded to max_seq_len,
   per-pair loss loop), the project with random batches (DistributedSampler, as main.py by default)
   and with `--group_by_length` batches (data/sampler.py); both project paths pad each batch to its
   longest row (data/collator.py) and use the batched loss (model/reward_model.py). All paths use the
   same model, so the same CPU rules (main.py's training/cpu_speed.py). A
   micro batch is fetch + collate + forward + backward in bf16; every round then runs one optimizer
   step (fp32 master weights, clipping 1.0, AdamW, as DeepSpeed's bf16 mode), and each path is
   charged 1/`--gradient_accumulation_steps` of it per micro batch (8: the card's 64 pairs per step
   at 8 per micro batch on one device). The timed batches of each path are a stratified sample of its
   epoch (evenly spaced quantiles of the batch length), so a few steps estimate a whole epoch's
   throughput; warm-up rounds are excluded.
4. A bf16 matmul peak: the median of 4096^3 probes (best of 3 each) run between rounds, and
   real_token_utilization = 6 x non-embedding params x real tokens/s (grouped path) / matmul peak.
   The best single probe is reported too: on this shared machine bursts reach ~2x the median.

`--profile` adds a torch.profiler breakdown of two project (grouped) steps.
"""
import argparse
import json
import os
import shutil
import tempfile
import time

import numpy as np
import torch

from benchmarks import hh_like
from model.tiny import OPT_SHAPES
from training.cpu_speed import cpu_training_speedups
from benchmarks.measure import clock, in_fresh_process, matmul_gflops, max_rss_mb
from benchmarks.report import print_table, summarise

EOT = "<|endoftext|>"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model_shape", choices=sorted(OPT_SHAPES), default="125m",
                        help="OPT shape with random weights: 125m (opt-125m) or 350m (the card's opt-350m).")
    parser.add_argument("--steps", type=int, default=8, help="Timed training steps per path.")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed warm-up steps per path, run first.")
    parser.add_argument("--batch_size", type=int, default=8, help="Pairs per micro batch.")
    parser.add_argument("--max_seq_len", type=int, default=512, help="Tokens per prompt+answer, truncated.")
    parser.add_argument("--num_pairs", type=int, default=10000, help="Training pairs to tokenise and sample from.")
    parser.add_argument("--tokenizer_vocab", type=int, default=16000, help="BPE vocabulary trained on the data.")
    parser.add_argument("--precision", choices=["bf16", "autocast"], default="bf16",
                        help="bf16: bf16 weights and activations, fp32 master weights in AdamW (DeepSpeed's "
                             "bf16 mode); autocast: fp32 weights under torch.autocast(bfloat16). Same for all paths.")
    parser.add_argument("--attn_implementation", default="auto", choices=["auto", "sdpa", "eager"],
                        help="Attention kernel, the same rule for every path. auto: main.py's CPU rules "
                             "(training/cpu_speed.py: eager for batches up to 192 tokens, SDPA above, and its "
                             "dropout); sdpa: SDPA and torch's dropout (main.py --disable_cpu_speedups); "
                             "eager: eager attention for every batch, with the CPU dropout.")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=8,
                        help="Micro batches per optimizer step: the card's 64 pairs / 8 per micro batch on one "
                             "device. A path's time per micro batch is its forward + backward plus one optimizer "
                             "step (measured every round) divided by this.")
    parser.add_argument("--pad_to_multiple_of", type=int, default=None,
                        help="Project collator: round each batch length up to a multiple of this.")
    parser.add_argument("--megabatch_size", type=int, default=50,
                        help="LengthGroupedSampler: global batches per length-sorted megabatch.")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch intra-op threads, and the Rust tokenizer's threads (RAYON_NUM_THREADS).")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="Time steps, tokenisation and matmul probes by wall clock, or by this process's CPU "
                             "time (with --threads 1: robust to other load on a shared machine).")
    parser.add_argument("--seed", type=int, default=1234, help="Seed for data order and weights.")
    parser.add_argument("--no_rss_step", action="store_true",
                        help="Peak RSS of data preparation only (skip the training step in the RSS processes).")
    parser.add_argument("--profile", action="store_true", help="torch.profiler breakdown of two project steps.")
    parser.add_argument("--workdir", default=None, help="Folder for data and caches (default: a temp folder).")
    parser.add_argument("--json", default=None, help="Write the results to this JSON file.")
    args = parser.parse_args(argv)
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu sums the CPU time of all threads: use it with --threads 1")
    return args


# ---------------------------------------------------------------- model and training step

def build_model(shape, tokenizer, attn_implementation, seed):
    """An OPT of `shape` (model/tiny.py OPT_SHAPES) with random weights (no download) around `tokenizer`, built
    by the project's recipe (`build_reward_model`, embeddings resized to the tokenizer as main.py does);
    `attn_implementation` eager, or transformers' default."""
    import tempfile

    from model.create import build_reward_model
    from model.tiny import write_opt_shape
    from utils.settings import Settings
    with tempfile.TemporaryDirectory() as folder:
        write_opt_shape(folder, shape, tokenizer)
        settings = Settings(model_name_or_path=folder, num_padding_at_beginning=1, pad_token_id=tokenizer.pad_token_id)
        torch.manual_seed(seed)
        model = build_reward_model(settings, tokenizer, "random")
    if attn_implementation == "eager":
        model.rwtransformer.set_attn_implementation("eager")
    return model


def non_embedding_params(model):
    embeddings = {id(p) for name, p in model.named_parameters() if "embed_tokens" in name or "embed_positions" in name}
    return sum(p.numel() for p in model.parameters() if id(p) not in embeddings)


def project_loss(model, batch):
    return model(**batch)["loss"]


def baseline_loss(model, batch):
    from benchmarks import deepspeed_chat
    return deepspeed_chat.loss(model, batch)


class Trainer:
    """forward + backward + clip (1.0, the card's) + AdamW step.

    precision 'bf16' is what DeepSpeed's bf16 mode does: bf16 weights, activations and gradients,
    fp32 master weights and optimizer state (torch's fused CPU AdamW), bf16 weights copied back.
    'autocast': fp32 weights and AdamW, matmuls in bf16 under torch.autocast.
    """

    def __init__(self, model, precision, lr=5e-5, cpu_speedups=True):
        self.model, self.precision, self.cpu_speedups = model.train(), precision, cpu_speedups
        self.params = list(model.parameters())
        if precision == "bf16":
            model.to(torch.bfloat16)
            self.master = [torch.nn.Parameter(p.detach().float()) for p in self.params]
        else:
            self.master = self.params
        self.optimizer = torch.optim.AdamW(self.master, lr=lr, betas=(0.9, 0.95), weight_decay=0.0, fused=True)

    def step(self, loss_fn, batch):
        loss = self.forward_backward(loss_fn, batch)
        self.optimizer_step()
        return loss

    def forward_backward(self, loss_fn, batch):
        """One micro batch; gradients accumulate until optimizer_step."""
        from torch.profiler import record_function
        with record_function("forward"), torch.autocast("cpu", torch.bfloat16, enabled=self.precision == "autocast"), \
                cpu_training_speedups(self.model, batch["input_ids"], self.cpu_speedups, self.cpu_speedups):  # main.py's CPU rules
            loss = loss_fn(self.model, batch)
        with record_function("backward"):
            loss.backward()
        return float(loss.detach())

    def optimizer_step(self):
        from torch.profiler import record_function
        with record_function("optimizer"):
            if self.master is not self.params:
                for param, master in zip(self.params, self.master):
                    master.grad = param.grad.float()
                    param.grad = None
            torch.nn.utils.clip_grad_norm_(self.master, 1.0, foreach=True)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.master is not self.params:
                with torch.no_grad():
                    torch._foreach_copy_(self.params, self.master)


# ---------------------------------------------------------------- data preparation (child processes)

def prepare(path, cfg):
    """Tokenise + cache one path's data in this (fresh) process; returns times and peak RSS."""
    torch.set_num_threads(cfg["threads"])
    import datasets
    from torch.utils.data import DataLoader, DistributedSampler

    from benchmarks import deepspeed_chat
    from data import PairCollator, build_pair_datasets
    from data.sampler import LengthGroupedSampler
    datasets.disable_progress_bars()
    rss_imports = max_rss_mb()
    tokenizer = hh_like.load_tokenizer(cfg["tokenizer"])
    now = clock(cfg["clock"])
    start = now()
    if path == "project":
        train, _ = build_pair_datasets([cfg["pairs"]], "0,1", cfg["seed"], tokenizer, cfg["max_seq_len"],
                                       cfg["project_cache"], EOT)
        seconds = now() - start
        sampler = LengthGroupedSampler(train, cfg["batch_size"], 1, 0, cfg["seed"],  # longest batch first
                                       megabatch_size=cfg["megabatch_size"])
        loader = DataLoader(train, batch_size=cfg["batch_size"], sampler=sampler,
                            collate_fn=PairCollator(tokenizer.pad_token_id, cfg["pad_to_multiple_of"]))
        loss_fn = project_loss
    else:
        (train, _), _ = deepspeed_chat.create_prompt_dataset(cfg["pairs"], tokenizer, cfg["max_seq_len"],
                                                             cfg["baseline_cache"], cfg["seed"], "0,1", EOT)
        seconds = now() - start
        loader = DataLoader(train, batch_size=cfg["batch_size"], collate_fn=deepspeed_chat.DataCollatorReward(),
                            sampler=DistributedSampler(train, num_replicas=1, rank=0, seed=cfg["seed"]))
        loss_fn = baseline_loss
    longest = None
    for batch in loader:  # one epoch, as the trainer reads it
        if longest is None or batch["input_ids"].size(1) > longest["input_ids"].size(1):
            longest = batch
    result = {"tokenize_s": seconds, "pairs": len(train), "rss_after_imports_mb": rss_imports,
              "data_peak_rss_mb": max_rss_mb()}
    if cfg["rss_step"]:
        model = build_model(cfg["shape"], tokenizer, cfg["attn_implementation"], cfg["seed"])
        Trainer(model, cfg["precision"], cpu_speedups=cfg["attn_implementation"] != "sdpa").step(loss_fn, longest)
        result.update(peak_rss_mb=max_rss_mb(), rss_step_length=int(longest["input_ids"].size(1)))
    return result


def rust_floor_s(cfg):
    """Seconds the Rust tokenizer alone takes over the text once (each prompt and each answer, one
    batch call, nothing around it): what any tokenisation giving the tokenizer's exact ids spends."""
    from tokenizers import Tokenizer

    from data.readers import read_rows, split_files
    tokenizer, now = hh_like.load_tokenizer(cfg["tokenizer"]), clock(cfg["clock"])
    rows = [row for file in split_files(cfg["pairs"]).values() for row in read_rows(file)[0]]
    texts = [row[key] for row in rows for key in ("prompt", "chosen", "rejected")]
    rust = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())  # a fresh copy: a cold word cache
    start = now()
    rust.encode_batch_fast(texts, add_special_tokens=False)
    return now() - start


# ---------------------------------------------------------------- the three training paths

class Path:
    """One path's epoch: its batches (row indices), each batch's padded length and real tokens."""

    def __init__(self, name, dataset, sampler, collate, loss_fn, batch_size, padded_length, real_tokens):
        self.name, self.dataset, self.collate, self.loss_fn = name, dataset, collate, loss_fn
        order = list(sampler)
        self.batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        self.full = [i for i, b in enumerate(self.batches) if len(b) == batch_size]
        self.lengths = np.array([padded_length(b) for b in self.batches])
        self.real = np.array([real_tokens(b) for b in self.batches])
        self.padded = np.array([2 * len(b) for b in self.batches]) * self.lengths

    def pick(self, steps, warmup):
        """Timed batches at evenly spaced quantiles of the batch length; warm-up batches come first."""
        by_length = sorted(self.full, key=lambda i: (self.lengths[i], i))
        timed = [by_length[min(int((k + 0.5) * len(by_length) / steps), len(by_length) - 1)] for k in range(steps)]
        warm = [i for i in self.full if i not in timed][:warmup]
        return warm, timed

    def loader(self, picked):
        from torch.utils.data import DataLoader
        return iter(DataLoader(self.dataset, batch_sampler=[self.batches[i] for i in picked],
                               collate_fn=self.collate))


def build_paths(args, tokenizer, project_train, baseline_train):
    from torch.utils.data import DistributedSampler

    from benchmarks.deepspeed_chat import DataCollatorReward
    from data import PairCollator
    from data.sampler import LengthGroupedSampler, pair_lengths, pair_row_lengths
    lengths = pair_lengths(project_train)
    multiple = args.pad_to_multiple_of or 1
    both = pair_row_lengths(project_train).sum(axis=1)  # real tokens per pair
    base_real = np.array([int(c["attention_mask"].sum()) + int(r["attention_mask"].sum())
                          for c, r in zip(baseline_train.chosen_dataset, baseline_train.reject_dataset)])
    collator = PairCollator(tokenizer.pad_token_id, pad_to_multiple_of=args.pad_to_multiple_of)

    def project_length(batch):
        return int(-(-lengths[batch].max() // multiple) * multiple)

    def sampler(dataset):
        return DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=args.seed)
    grouped = LengthGroupedSampler(project_train, args.batch_size, 1, 0, args.seed, megabatch_size=args.megabatch_size)
    return {
        "baseline": Path("baseline", baseline_train, sampler(baseline_train), DataCollatorReward(), baseline_loss,
                         args.batch_size, lambda b: args.max_seq_len, lambda b: int(base_real[b].sum())),
        "project": Path("project", project_train, sampler(project_train), collator, project_loss,
                        args.batch_size, project_length, lambda b: int(both[b].sum())),
        "project_grouped": Path("project_grouped", project_train, grouped, collator, project_loss,
                                args.batch_size, project_length, lambda b: int(both[b].sum())),
    }


def time_training(args, trainer, paths):
    """Interleaved rounds: each round runs one micro batch of every path (rotating who goes first),
    then one optimizer step (the same for every path: timed on its own) and one matmul probe."""
    picks = {name: path.pick(args.steps, args.warmup) for name, path in paths.items()}
    loaders = {name: paths[name].loader(warm + timed) for name, (warm, timed) in picks.items()}
    records = {name: [] for name in paths}
    now = clock(args.clock)
    probes, optimizer_s = [matmul_gflops(4096, 3, now)], []
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    names = list(paths)
    for round_ in range(args.warmup + args.steps):
        for k in range(len(names)):
            name = names[(round_ + k) % len(names)]
            start, wall, cpu = now(), time.perf_counter(), time.process_time()
            batch = next(loaders[name])
            loss = trainer.forward_backward(paths[name].loss_fn, batch)
            seconds = now() - start
            if round_ >= args.warmup:
                records[name].append({"s": seconds, "wall_s": time.perf_counter() - wall,
                                      "cpu_s": time.process_time() - cpu,
                                      "pairs": batch["input_ids"].size(0) // 2,
                                      "length": int(batch["input_ids"].size(1)),
                                      "real": int(batch["attention_mask"].sum()), "loss": loss})
        start = now()
        trainer.optimizer_step()
        if round_ >= args.warmup:
            optimizer_s.append(now() - start)
        probes.append(matmul_gflops(4096, 3, now))
        timing = " | ".join(f"{n} L={records[n][-1]['length']} {records[n][-1]['s']:.2f}s" for n in names
                            if round_ >= args.warmup)
        print(f"round {round_ + 1}/{args.warmup + args.steps}" + (" (warm-up)" if round_ < args.warmup else "")
              + (f" | {timing}" if timing else ""), flush=True)
    cpu_share = (time.process_time() - cpu_start) / (time.perf_counter() - wall_start) / args.threads
    probes.append(matmul_gflops(4096, 3, now))
    return records, probes, optimizer_s, cpu_share


def profile_project(trainer, path, non_embedding_params):
    """torch.profiler over two grouped-path steps (median-length batches): regions and top ops."""
    from torch.profiler import ProfilerActivity, profile, record_function
    by_length = sorted(path.full, key=lambda i: path.lengths[i])
    picked = by_length[len(by_length) // 2:len(by_length) // 2 + 2]
    loader = path.loader(picked)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in picked:
            with record_function("fetch+collate"):
                batch = next(loader)
            trainer.step(path.loss_fn, batch)
    events = prof.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=20))
    regions = {e.key: e.cpu_time_total / 1e6 for e in events
               if e.key in ("fetch+collate", "forward", "backward", "optimizer")}
    self_s = {e.key: e.self_cpu_time_total / 1e6 for e in events}
    total = sum(self_s.values())
    linear = self_s.get("aten::mm", 0.0) + self_s.get("aten::addmm", 0.0)  # the Linear layers, fwd + bwd
    padded = sum(2 * len(path.batches[i]) * int(path.lengths[i]) for i in picked)
    top = sorted(self_s.items(), key=lambda kv: -kv[1])[:12]
    return {"batch_lengths": [int(path.lengths[i]) for i in picked], "total_s": total, "regions_s": regions,
            "linear_matmul_share": linear / total,
            "linear_matmul_gflops": 6 * non_embedding_params * padded / linear / 1e9 if linear else None,
            "top_ops_self_share": {k: round(v / total, 4) for k, v in top}}


# ---------------------------------------------------------------- main

def make_data(args, workdir):
    pairs_dir = os.path.join(workdir, "pairs")
    rows = hh_like.write_pair_folder(pairs_dir, args.num_pairs, seed=args.seed)
    tokenizer = hh_like.build_tokenizer(os.path.join(workdir, "tokenizer"), rows, args.tokenizer_vocab)
    sample = [r["prompt"] + r["chosen"] for r in rows[:2000]]
    ids = tokenizer(sample)["input_ids"]
    full = [len(i) + len(tokenizer(EOT, add_special_tokens=False)["input_ids"]) for i in ids]
    info = {"pairs": args.num_pairs, "words": hh_like.length_summary(rows),
            "tokens_per_word": sum(len(i) - 1 for i in ids) / sum(len(t.split()) for t in sample),
            "row_tokens_median": float(np.median(full)),
            "rows_truncated_fraction": float(np.mean(np.array(full) > args.max_seq_len))}
    return pairs_dir, tokenizer, info


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)  # the tokenizer's pool, here and in the children
    wall_start = time.perf_counter()
    load_start = os.getloadavg()
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench-")
    for sub in ("project_cache", "baseline_cache"):
        shutil.rmtree(os.path.join(workdir, sub), ignore_errors=True)
        os.makedirs(os.path.join(workdir, sub))
    print(f"bench: data in {workdir}", flush=True)
    pairs_dir, tokenizer, data_info = make_data(args, workdir)
    print(f"data: {json.dumps(data_info)}", flush=True)

    cfg = {"pairs": pairs_dir, "tokenizer": os.path.join(workdir, "tokenizer"), "seed": args.seed,
           "max_seq_len": args.max_seq_len, "batch_size": args.batch_size, "threads": args.threads,
           "project_cache": os.path.join(workdir, "project_cache"),
           "baseline_cache": os.path.join(workdir, "baseline_cache"), "shape": args.model_shape,
           "attn_implementation": args.attn_implementation, "precision": args.precision,
           "megabatch_size": args.megabatch_size, "pad_to_multiple_of": args.pad_to_multiple_of,
           "rss_step": not args.no_rss_step, "clock": args.clock}
    prep = {}
    for path in ("project", "baseline"):
        prep[path] = in_fresh_process(prepare, path, cfg)
        print(f"prepare {path}: {json.dumps(prep[path])}", flush=True)
    prep["rust_floor_s"] = in_fresh_process(rust_floor_s, cfg)
    print(f"the Rust tokenizer alone over the text once: {prep['rust_floor_s']:.2f} s", flush=True)

    import datasets

    from data import build_pair_datasets
    datasets.disable_progress_bars()
    project_train, _ = build_pair_datasets([pairs_dir], "0,1", args.seed, tokenizer, args.max_seq_len,
                                           cfg["project_cache"], EOT)
    baseline_train = torch.load(os.path.join(cfg["baseline_cache"], "traindataset.pt"), weights_only=False)
    paths = build_paths(args, tokenizer, project_train, baseline_train)
    model = build_model(args.model_shape, tokenizer, args.attn_implementation, args.seed)
    params = {"total": sum(p.numel() for p in model.parameters()), "non_embedding": non_embedding_params(model)}
    trainer = Trainer(model, args.precision, cpu_speedups=args.attn_implementation != "sdpa")
    records, probes, optimizer_s, cpu_share = time_training(args, trainer, paths)
    result = summarise(args, records, probes, optimizer_s, paths, prep, data_info, params, cpu_share)
    if args.profile:
        result["profile"] = profile_project(trainer, paths["project_grouped"], params["non_embedding"])
    result.update(load_average_start=load_start, load_average_end=os.getloadavg(),
                  wall_s=time.perf_counter() - wall_start)
    print_table(result)
    print(f"wall time {result['wall_s']:.0f} s; load average {load_start[0]:.1f} at start, "
          f"{result['load_average_end'][0]:.1f} at end")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.json}")
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()
