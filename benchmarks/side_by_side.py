"""DeepSpeed-Chat's actual step-2 script beside this project's main.py: same model, data and flags.

    python benchmarks/side_by_side.py --mode fidelity --dschat PATH/DeepSpeed-Chat [--steps 25]
    python benchmarks/side_by_side.py --mode speed --dschat PATH/DeepSpeed-Chat --json sxs_speed.json

PATH/DeepSpeed-Chat is the folder `applications/DeepSpeed-Chat` of deepspeedai/DeepSpeedExamples
(docs/side_by_side.md says how to get it). Each run is a fresh process of benchmarks/sxs_runner.py,
which patches the reward model's forward and DeepSpeed's engine step in memory to log them, applies
benchmarks/dschat_shims.py to DeepSpeed-Chat (CPU, transformers 5), and runs the script with runpy.
Neither program's files are edited.

--mode fidelity: a tiny random-weight OPT (model/tiny.py) and HH-style pairs (benchmarks/hh_like.py,
some with prompts longer than --max_seq_len, so identical after truncation) saved with
`save_to_disk`; both scripts train one epoch of exactly --steps micro batches (fp32, dropout 0,
ZeRO-0, no gradient accumulation, split 2,4,4, seed 1234) and evaluate before and after.
Measured: per micro step, the pairs in the batch (hashes of each row's unpadded ids) and the fp32
loss; the learning rate after each step; the eval accuracy each program printed and the one its
logged scores give; per-pair eval score differences; checksums of the initial weights.
Not measured: gradients and optimizer state directly (a different update shows in the next loss).

--mode speed: a random-weight opt-125m-shape model (benchmarks/bench.py) and
HH-harmless-like pairs, --max_seq_len 512, 4 pairs per micro batch, bf16, ZeRO-0, dropout 0.
DeepSpeed-Chat, main.py and main.py --group_by_length (--runs; project_unsplit adds main.py --sub_batches
off, baseline the main.py of another checkout, --baseline) run in turn (A, B, C, A, B, C, ...) so that
other load on the machine hits all alike. Measured per run: pairs/s over micro steps
--time_from..--time_to (wall time between step ends), time from process start to the end of the first
step (imports, tokenisation, model load, the eval before training), peak RSS of the process and the
children it waited for (getrusage via wait4), padded tokens and forwards per micro step. Not measured:
the final evaluation and saving (each run ends right after the last timed step), GPU behaviour, more than one rank.

Longer than most modules: it is one command whose two modes share their setup (model, data, runs);
running a script lives in sxs_runner.py and dschat_shims.py, reading the logs in sxs_logs.py.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

from benchmarks import hh_like, sxs_logs
from utils.dist import free_port

RUNNER = os.path.join(HERE, "sxs_runner.py")
DSCHAT_SCRIPT = os.path.join("training", "step2_reward_model_finetuning", "main.py")
SHARES = (2, 4, 4)  # --data_split; step 2 takes the second share
SPEED_RUNS = {"dschat": [], "project": [], "project_grouped": ["--group_by_length"],
              "project_unsplit": ["--sub_batches", "off"], "project_unshared": ["--share_prompt", "off"],
              "project_grouped_unshared": ["--group_by_length", "--share_prompt", "off"],
              "baseline": []}  # name -> extra main.py flags; baseline: main.py of the --baseline checkout


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--mode", choices=["fidelity", "speed"], required=True,
                        help="fidelity: batch-by-batch comparison; speed: interleaved timing.")
    parser.add_argument("--dschat", required=True,
                        help="DeepSpeed-Chat folder (applications/DeepSpeed-Chat of DeepSpeedExamples).")
    parser.add_argument("--project", default=ROOT,
                        help="This project's checkout whose main.py is run (e.g. a `git worktree` of another commit).")
    parser.add_argument("--steps", type=int, default=None,
                        help="Micro steps per run (fidelity: one epoch of exactly this many; default 25; "
                             "speed: default --time_to).")
    parser.add_argument("--micro_batch", type=int, default=4, help="Pairs per micro batch (both scripts).")
    parser.add_argument("--eval_batch", type=int, default=16, help="Pairs per eval batch (both scripts).")
    parser.add_argument("--eval_pairs", type=int, default=None,
                        help="Pairs in the eval split's step-2 share (default: fidelity 100, speed 16).")
    parser.add_argument("--eval_iters", type=int, default=100,
                        help="--eval_iters given to both (100 is DeepSpeed-Chat's default).")
    parser.add_argument("--max_seq_len", type=int, default=None,
                        help="Tokens per prompt+answer (default: fidelity 128, speed 512).")
    parser.add_argument("--learning_rate", type=float, default=5e-5, help="Peak learning rate (cosine, no warm-up).")
    parser.add_argument("--weight_decay", type=float, default=0.1, help="AdamW weight decay.")
    parser.add_argument("--dropout", type=float, default=0.0,
                        help="--dropout given to both (0: deterministic training, needed for an exact comparison).")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default=None,
                        help="Training precision (default: fidelity fp32, speed bf16).")
    parser.add_argument("--long_prompt_every", type=int, default=7,
                        help="Fidelity: every Nth pair gets a prompt longer than --max_seq_len (0: none).")
    parser.add_argument("--arch", choices=["opt", "gpt2"], default="opt",
                        help="Fidelity: tiny model family (OPT: --num_padding_at_beginning 1; GPT-2: 0, other "
                             "weight-decay names).")
    parser.add_argument("--tiny_vocab", type=int, default=1024, help="Fidelity: BPE vocabulary of the tiny OPT.")
    parser.add_argument("--model_shape", choices=["125m", "350m"], default="125m",
                        help="Speed: OPT shape with random weights (benchmarks/bench.py).")
    parser.add_argument("--train_pairs", type=int, default=1000,
                        help="Speed: pairs in the train split's step-2 share (fidelity: --steps x --micro_batch).")
    parser.add_argument("--runs", nargs="+", choices=list(SPEED_RUNS), default=["dschat", "project", "project_grouped"],
                        help="Speed: the runs of each round, in turn (project_unsplit: main.py --sub_batches off).")
    parser.add_argument("--rounds", type=int, default=2, help="Speed: how many times each run is repeated, in turn.")
    parser.add_argument("--time_from", type=int, default=4, help="Speed: first timed micro step.")
    parser.add_argument("--time_to", type=int, default=20, help="Speed: last timed micro step (the run ends there).")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS of the runs (default: fidelity 1, speed unset: torch's default).")
    parser.add_argument("--dschat_args", default="", help="Extra flags for DeepSpeed-Chat's script (one string).")
    parser.add_argument("--project_args", default="", help="Extra flags for main.py (one string).")
    parser.add_argument("--baseline", default=None,
                        help="Speed: another checkout of this project (e.g. `git worktree add /tmp/old COMMIT`) whose "
                             "main.py the run 'baseline' runs with default flags, to compare two commits.")
    parser.add_argument("--timeout", type=int, default=3600, help="Seconds before a run is killed.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the synthetic data and random weights.")
    parser.add_argument("--workdir", default=None,
                        help="Keep the model, data and logs here (default: a temp folder, removed).")
    parser.add_argument("--json", default=None, help="Write the full result (per-step table included) here.")
    args = parser.parse_args(argv)
    fidelity = args.mode == "fidelity"
    defaults = {"steps": 25 if fidelity else args.time_to, "eval_pairs": 100 if fidelity else 16,
                "max_seq_len": 128 if fidelity else 512, "dtype": "fp32" if fidelity else "bf16",
                "threads": 1 if fidelity else None}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if fidelity:
        args.train_pairs = args.steps * args.micro_batch
    args.dschat, args.project = os.path.abspath(args.dschat), os.path.abspath(args.project)
    problems = []
    if not os.path.isfile(os.path.join(args.dschat, DSCHAT_SCRIPT)):
        problems.append(f"--dschat {args.dschat}: no {DSCHAT_SCRIPT} there")
    if not os.path.isdir(os.path.join(args.dschat, "dschat")):
        problems.append(f"--dschat {args.dschat}: no dschat/ package there")
    if not os.path.isfile(os.path.join(args.project, "main.py")):
        problems.append(f"--project {args.project}: no main.py there")
    if not fidelity and not 2 <= args.time_from <= args.time_to <= args.steps:
        problems.append("speed needs 2 <= --time_from <= --time_to <= --steps")
    if "baseline" in args.runs and not (args.baseline and os.path.isfile(os.path.join(args.baseline, "main.py"))):
        problems.append("--runs baseline needs --baseline PATH, a checkout of this project with main.py")
    if not fidelity and "dschat" not in args.runs:
        problems.append("--runs needs dschat: the ratios are against it")
    if not fidelity and args.train_pairs < args.steps * args.micro_batch:
        problems.append(f"--train_pairs {args.train_pairs} < --steps x --micro_batch")
    if problems:
        parser.error("; ".join(problems))
    return args


# ---------------------------------------------------------------- data and model

def share_size(total, index=1):
    """Rows of share `index` when `total` rows are split by SHARES (DeepSpeed-Chat's rounding rule)."""
    bounds = [0]
    for share in SHARES:
        bounds.append(bounds[-1] + int(round(share / sum(SHARES) * total)))
    excess = bounds[-1] - total
    bounds = [0] + [b - excess for b in bounds[1:]]
    return bounds[index + 1] - bounds[index]


def rows_for_share(pairs):
    """The smallest dataset size whose step-2 share holds exactly `pairs` rows."""
    total = pairs
    while share_size(total) != pairs:
        total += 1
        if total > 10 * pairs + 10:
            raise ValueError(f"no dataset size gives a step-2 share of {pairs}")
    return total


def lengthen_prompts(rows, every, words):
    """Every `every`-th row gets a prompt of more than `words` words: identical after truncation."""
    for i in range(0, len(rows), every) if every else ():
        prompt = rows[i]["prompt"]
        while len(prompt.split()) <= words:
            prompt = prompt.replace("\n\nAssistant:", "") + rows[i]["prompt"]
        rows[i]["prompt"] = prompt
    return rows


def save_pairs(folder, train_rows, test_rows):
    """A save_to_disk DatasetDict under a name both scripts map to 'Dahoas/rm-static' (prompt+answer)."""
    from datasets import Dataset, DatasetDict
    path = os.path.join(folder, "Dahoas", "rm-static")
    DatasetDict({"train": Dataset.from_list(train_rows), "test": Dataset.from_list(test_rows)}).save_to_disk(path)
    return path


def make_pairs(args):
    train, test = rows_for_share(args.train_pairs), rows_for_share(args.eval_pairs)
    rows = hh_like.make_pairs(train + test, seed=args.seed)
    return rows[:train], rows[train:]


def fidelity_inputs(args, work):
    from model.tiny import build_tiny_gpt2, build_tiny_opt
    train, test = make_pairs(args)
    train = lengthen_prompts(train, args.long_prompt_every, args.max_seq_len)
    test = lengthen_prompts(test, args.long_prompt_every, args.max_seq_len)
    corpus = [r["prompt"] + r["chosen"] for r in train + test] + [r["rejected"] for r in train + test]
    build = build_tiny_opt if args.arch == "opt" else build_tiny_gpt2
    model = build(os.path.join(work, "model"), corpus=corpus, vocab_size=args.tiny_vocab,
                  max_positions=max(512, args.max_seq_len), seed=args.seed)
    return model, save_pairs(os.path.join(work, "data"), train, test)


def speed_inputs(args, work):
    from benchmarks import bench
    train, test = make_pairs(args)
    folder = os.path.join(work, "model")
    tokenizer = hh_like.build_tokenizer(folder, train)
    bench.build_model(args.model_shape, tokenizer, "auto", args.seed).rwtransformer.save_pretrained(folder)
    return folder, save_pairs(os.path.join(work, "data"), train, test)


# ---------------------------------------------------------------- running the scripts

def common_flags(args, model, data, cache):
    return ["--model_name_or_path", model, "--data_path", data, "--data_split", ",".join(map(str, SHARES)),
            "--seed", "1234", "--data_output_path", cache, "--max_seq_len", str(args.max_seq_len),
            "--num_padding_at_beginning", "1" if args.arch == "opt" else "0",
            "--per_device_train_batch_size", str(args.micro_batch),
            "--per_device_eval_batch_size", str(args.eval_batch), "--gradient_accumulation_steps", "1",
            "--learning_rate", str(args.learning_rate), "--weight_decay", str(args.weight_decay),
            "--lr_scheduler_type", "cosine", "--num_warmup_steps", "0", "--num_train_epochs", "1",
            "--dropout", str(args.dropout), "--zero_stage", "0", "--eval_iters", str(args.eval_iters)]


def script_command(side, args, model, data, run_dir, extra=(), project=None):
    """(script, argv, extra env) for one run; `side` is dschat or project (main.py of `project`, default
    --project)."""
    flags = common_flags(args, model, data, os.path.join(run_dir, "cache"))
    if side == "dschat":  # its --dtype has no fp32: the shim drops the bf16 section (SXS_DTYPE)
        flags += ["--dtype", "bf16", "--local_rank", "0"] + args.dschat_args.split()
        return os.path.join(args.dschat, DSCHAT_SCRIPT), flags, {"SXS_DTYPE": args.dtype, "SXS_DSCHAT": args.dschat}
    project = project or args.project
    flags += ["--dtype", args.dtype, "--deepspeed_config", os.path.join(project, "ds_config.json"),
              "--output_dir", os.path.join(run_dir, "out")] + args.project_args.split() + list(extra)
    return os.path.join(project, "main.py"), flags, {}


def wait_with_rusage(proc, timeout):
    """(exit code, peak RSS in MB of the process and its waited-for children); kills it after `timeout`."""
    deadline = time.time() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage.ru_maxrss / 1024
        if time.time() > deadline:
            proc.kill()
        time.sleep(0.2)


def launch(side, args, script, flags, env_extra, run_dir, stop_after=0):
    """Run one script under sxs_runner.py; returns its log records, stdout text and process figures."""
    os.makedirs(run_dir, exist_ok=True)
    log, out = os.path.join(run_dir, "log.jsonl"), os.path.join(run_dir, "stdout.txt")
    env = dict(os.environ, SXS_LOG=log, SXS_STOP_AFTER=str(stop_after), RANK="0", LOCAL_RANK="0",
               WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=free_port(), **env_extra)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    start = time.time()
    with open(out, "w") as f:
        proc = subprocess.Popen([sys.executable, RUNNER, "dschat" if side == "dschat" else "project", script, *flags],
                                stdout=f, stderr=subprocess.STDOUT, env=env, cwd=os.path.dirname(script))
        rc, rss_mb = wait_with_rusage(proc, args.timeout)
    with open(out) as f:
        text = f.read()
    if rc != 0:
        sys.exit(f"{side} failed (exit {rc}); last output:\n{text[-3000:]}\n(full output: {out})")
    return {"records": sxs_logs.read_log(log), "stdout": text, "start": start,
            "seconds": time.time() - start, "peak_rss_mb": rss_mb}


# ---------------------------------------------------------------- fidelity

def run_fidelity(args, work):
    model, data = fidelity_inputs(args, work)
    runs = {}
    for side in ("dschat", "project"):
        run_dir = os.path.join(work, side)
        script, flags, env = script_command(side, args, model, data, run_dir)
        print(f"running {side}: {script}", flush=True)
        runs[side] = launch(side, args, script, flags, env, run_dir)
    result = sxs_logs.summarise_fidelity(runs["dschat"]["records"], runs["project"]["records"])
    result["printed_acc"] = {side: sxs_logs.reported_accuracies(side, run["stdout"]) for side, run in runs.items()}
    result["settings"] = settings(args)
    print_fidelity(result)
    return result


def fmt(value, spec=".6f"):
    return "-" if value is None else format(value, spec)


def print_fidelity(r):
    st = r["settings"]
    print(f"\nmain.py from {st['project']} (commit {st['project_commit']}, modified tracked files: "
          f"{', '.join(st['project_modified_files']) or 'none'}); DeepSpeed-Chat from {st['dschat']}")
    print("\nstep | same pairs | identical pairs | loss DeepSpeed-Chat | loss main.py | |diff| | "
          "lr DS-Chat | lr main.py")
    for s in r["steps"]:
        print(f"{s['step']:4d} | {'yes' if s['same_pairs'] else ('set' if s['same_set'] else 'no'):>10} | "
              f"{fmt(s['identical_pairs_in_batch'], 'd'):>15} | {fmt(s['ref_loss']):>19} | {fmt(s['new_loss']):>12} | "
              f"{fmt(s['loss_diff'], '.2e'):>8} | {fmt(s['ref_lr'], '.3e')} | {fmt(s['new_lr'], '.3e')}")
    print(f"\nmicro steps: DeepSpeed-Chat {r['ref_micro_steps']}, main.py {r['new_micro_steps']}")
    print(f"batches with identical pairs: {r['same_pairs_batches']}/{r['batches']} "
          f"(same pairs in any order: {r['same_set_batches']}/{r['batches']})")
    print(f"max |loss diff|: {fmt(r['max_loss_diff'], '.3e')} (on identical batches: "
          f"{fmt(r['max_loss_diff_same_pairs'], '.3e')}); pairs identical after truncation trained by "
          f"DeepSpeed-Chat: {r['identical_pairs_trained_ref']}")
    w = r["initial_weights"]
    print(f"initial weights (sum, v_head sum, count): DeepSpeed-Chat {w['ref']}, main.py {w['new']}")
    rng = r["rng_at_first_train_forward"]
    print(f"torch CPU RNG state at the first training forward: {'same' if rng['ref'] == rng['new'] else 'different'} "
          f"({rng['ref']} vs {rng['new']}; dropout masks come from it)")
    for phase in ("eval_before", "eval_after"):
        e = r[phase]
        print(f"{phase.replace('_', ' ')}: accuracy DeepSpeed-Chat {fmt(e['ref_acc'], '.4f')} "
              f"({e['ref_pairs']} pairs), "
              f"main.py {fmt(e['new_acc'], '.4f')} ({e['new_pairs']} pairs); pairs scored by both "
              f"{e['common_pairs']}, max |score diff| {fmt(e['max_score_diff'], '.2e')}")
    print(f"accuracies as printed: DeepSpeed-Chat {r['printed_acc']['dschat']}, main.py {r['printed_acc']['project']}")


# ---------------------------------------------------------------- speed

def speed_figures(run, args):
    steps = sxs_logs.micro_steps(run["records"])
    timed = steps[args.time_from - 1:args.time_to]
    seconds = timed[-1]["t"] - steps[args.time_from - 2]["t"]  # from the end of the step before the first timed one
    pairs = sum(len(s["pairs"]) for s in timed)
    return {"pairs_per_s": pairs / seconds, "timed_steps": len(timed), "timed_seconds": seconds,
            "first_step_s": steps[0]["t"] - run["start"], "peak_rss_mb": run["peak_rss_mb"],
            "mean_padded_len": sum(s["padded_len"] for s in timed) / len(timed), "run_seconds": run["seconds"],
            "mean_padded_tokens": sum(s["padded_tokens"] for s in timed) / len(timed),
            "mean_tokens": sum(s["tokens"] for s in timed) / len(timed),
            "mean_forwards": sum(s["forwards"] for s in timed) / len(timed)}


def run_speed(args, work):
    model, data = speed_inputs(args, work)
    figures = {name: [] for name in args.runs}
    for round_index in range(args.rounds):
        for name in args.runs:
            extra = SPEED_RUNS[name]
            side = "dschat" if name == "dschat" else "project"
            run_dir = os.path.join(work, f"{name}_{round_index}")
            project = args.baseline if name == "baseline" else None
            script, flags, env = script_command(side, args, model, data, run_dir, extra, project)
            print(f"round {round_index + 1}/{args.rounds}: {name}", flush=True)
            result = speed_figures(launch(side, args, script, flags, env, run_dir, args.steps), args)
            figures[name].append(result)
            print(f"  {result['pairs_per_s']:.3f} pairs/s, first step after {result['first_step_s']:.1f} s, "
                  f"peak RSS {result['peak_rss_mb']:.0f} MB", flush=True)
            shutil.rmtree(os.path.join(run_dir, "cache"), ignore_errors=True)
            shutil.rmtree(os.path.join(run_dir, "out"), ignore_errors=True)
    result = {"settings": settings(args), "runs": figures, "summary": summarise_speed(figures)}
    print_speed(result["summary"])
    return result


def mean(values):
    return sum(values) / len(values)


def summarise_speed(figures):
    base = figures["dschat"]
    summary = {}
    for name, runs in figures.items():
        summary[name] = {
            "pairs_per_s": [r["pairs_per_s"] for r in runs],
            "speed_ratio": mean([r["pairs_per_s"] for r in runs]) / mean([r["pairs_per_s"] for r in base]),
            "speed_ratio_per_round": [r["pairs_per_s"] / b["pairs_per_s"] for r, b in zip(runs, base)],
            "peak_rss_mb": [r["peak_rss_mb"] for r in runs],
            "rss_ratio": max(r["peak_rss_mb"] for r in runs) / max(b["peak_rss_mb"] for b in base),
            "first_step_s": [r["first_step_s"] for r in runs],
            "first_step_ratio": mean([r["first_step_s"] for r in runs]) / mean([b["first_step_s"] for b in base]),
            "mean_padded_len": [r["mean_padded_len"] for r in runs],
            "mean_padded_tokens": [r["mean_padded_tokens"] for r in runs],
            "mean_tokens": [r["mean_tokens"] for r in runs],
            "mean_forwards": [r["mean_forwards"] for r in runs]}
    return summary


def print_speed(summary):
    print("\nrun | pairs/s | vs DeepSpeed-Chat (mean; per round) | peak RSS MB (vs) | first step s (vs) | "
          "padded tokens per micro step (forwards) | tokens computed (shared prompts once)")
    for name, s in summary.items():
        print(f"{name} | {', '.join(f'{x:.3f}' for x in s['pairs_per_s'])} | {s['speed_ratio']:.2f}x; "
              f"{', '.join(f'{x:.2f}' for x in s['speed_ratio_per_round'])} | "
              f"{', '.join(f'{x:.0f}' for x in s['peak_rss_mb'])} ({s['rss_ratio']:.2f}x) | "
              f"{', '.join(f'{x:.1f}' for x in s['first_step_s'])} ({s['first_step_ratio']:.2f}x) | "
              f"{', '.join(f'{x:.0f} ({f:.2f})' for x, f in zip(s['mean_padded_tokens'], s['mean_forwards']))} | "
              f"{', '.join(f'{x:.0f}' for x in s['mean_tokens'])}")


# ---------------------------------------------------------------- main

def settings(args):
    commit = subprocess.run(["git", "-C", args.project, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dschat = subprocess.run(["git", "-C", args.dschat, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", args.project, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True)
    baseline = args.baseline and subprocess.run(["git", "-C", args.baseline, "rev-parse", "--short", "HEAD"],
                                                capture_output=True, text=True).stdout.strip()
    return dict(vars(args), project_commit=commit.stdout.strip() or None, baseline_commit=baseline or None,
                project_modified_files=[line[3:] for line in dirty.stdout.splitlines()],
                dschat_commit=dschat.stdout.strip() or None)


def main(argv=None):
    args = parse_args(argv)
    work = args.workdir or tempfile.mkdtemp(prefix=f"sxs_{args.mode}_")
    os.makedirs(work, exist_ok=True)
    try:
        result = (run_fidelity if args.mode == "fidelity" else run_speed)(args, work)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
