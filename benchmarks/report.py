"""The figures benchmarks/bench.py reports: one JSON-ready dict of rates and ratios, and a printed table."""
import numpy as np

PATHS = ("baseline", "project", "project_grouped")
LABELS = {"baseline": "DeepSpeed-Chat baseline (pad to max_seq_len, per-pair loss loop)",
          "project": "project, random batches (dynamic padding, batched loss)",
          "project_grouped": "project, --group_by_length"}


def summarise(args, records, probes, optimizer_s, paths, prep, data_info, params, cpu_share):
    peak, best = float(np.median(probes)), max(probes)
    optimizer_share = float(np.mean(optimizer_s)) / args.gradient_accumulation_steps  # per micro batch
    result = {"model_shape": args.model_shape, "micro_batch_pairs": args.batch_size,
              "max_seq_len": args.max_seq_len, "precision": args.precision,
              "attn_implementation": args.attn_implementation, "threads": args.threads, "clock": args.clock,
              "gradient_accumulation_steps": args.gradient_accumulation_steps,
              "pad_to_multiple_of": args.pad_to_multiple_of, "timed_steps": args.steps,
              "warmup_steps": args.warmup, "non_embedding_params": params["non_embedding"],
              "params": params["total"], "data": data_info}
    rates = {}
    for name, rows in records.items():
        seconds = sum(r["s"] for r in rows) + len(rows) * optimizer_share
        rates[name] = {"pairs_per_s": sum(r["pairs"] for r in rows) / seconds,
                       "real_tokens_per_s": sum(r["real"] for r in rows) / seconds,
                       "padded_tokens_per_s": sum(2 * r["pairs"] * r["length"] for r in rows) / seconds,
                       "timed_real_token_fraction": sum(r["real"] for r in rows)
                       / sum(2 * r["pairs"] * r["length"] for r in rows),
                       "epoch_real_token_fraction": float(paths[name].real.sum() / paths[name].padded.sum()),
                       "epoch_mean_batch_length": float(paths[name].lengths.mean()),
                       "cpu_share": sum(r["cpu_s"] for r in rows) / sum(r["wall_s"] for r in rows) / args.threads,
                       "step_s": [round(r["s"], 3) for r in rows], "batch_lengths": [r["length"] for r in rows],
                       "losses": [round(r["loss"], 4) for r in rows]}
    flops = 6 * params["non_embedding"]
    for rate in rates.values():
        rate["real_token_utilization"] = flops * rate["real_tokens_per_s"] / (peak * 1e9)
        rate["padded_token_utilization"] = flops * rate["padded_tokens_per_s"] / (peak * 1e9)
    base, plain, grouped = (rates[n] for n in PATHS)
    result.update({
        "train_pairs_per_s_grouped": grouped["pairs_per_s"],
        "train_pairs_per_s_ungrouped": plain["pairs_per_s"],
        "baseline_train_pairs_per_s": base["pairs_per_s"],
        "train_speedup": grouped["pairs_per_s"] / base["pairs_per_s"],
        "train_speedup_ungrouped": plain["pairs_per_s"] / base["pairs_per_s"],
        "tokenize_s": prep["project"]["tokenize_s"],
        "baseline_tokenize_s": prep["baseline"]["tokenize_s"],
        "tokenize_speedup": prep["baseline"]["tokenize_s"] / prep["project"]["tokenize_s"],
        "tokenize_rust_floor_s": prep["rust_floor_s"],
        "tokenize_speedup_ceiling": prep["baseline"]["tokenize_s"] / prep["rust_floor_s"],
        "tokenize_pairs": {n: prep[n]["pairs"] for n in ("project", "baseline")},
        "data_peak_rss_mb": prep["project"]["data_peak_rss_mb"],
        "baseline_data_peak_rss_mb": prep["baseline"]["data_peak_rss_mb"],
        "data_peak_rss_ratio": prep["project"]["data_peak_rss_mb"] / prep["baseline"]["data_peak_rss_mb"],
        "rss_after_imports_mb": {n: prep[n]["rss_after_imports_mb"] for n in ("project", "baseline")},
        "matmul_peak_gflops": peak,
        "matmul_best_gflops": best,  # the fastest single probe: bursts on this shared machine reach ~2x the median
        "matmul_probes_gflops": [round(p) for p in probes],
        "optimizer_step_s": float(np.mean(optimizer_s)),
        "real_tokens_per_s": grouped["real_tokens_per_s"],
        "real_token_utilization": grouped["real_token_utilization"],
        "real_token_utilization_vs_best_matmul": grouped["real_token_utilization"] * peak / best,
        "real_token_fraction": {n: rates[n]["epoch_real_token_fraction"] for n in PATHS},
        "cpu_share_during_training": cpu_share,
        "paths": {n: dict(label=LABELS[n], **rates[n]) for n in PATHS},
    })
    if "peak_rss_mb" in prep["project"]:
        result.update(peak_rss_mb=prep["project"]["peak_rss_mb"], baseline_peak_rss_mb=prep["baseline"]["peak_rss_mb"],
                      peak_rss_ratio=prep["project"]["peak_rss_mb"] / prep["baseline"]["peak_rss_mb"],
                      peak_rss_step_length={n: prep[n]["rss_step_length"] for n in ("project", "baseline")})
    else:
        result["peak_rss_ratio"] = result["data_peak_rss_ratio"]
    return result


def print_table(r):
    print(f"\nmodel {r['model_shape']} ({r['non_embedding_params'] / 1e6:.0f}M non-embedding params), "
          f"{r['micro_batch_pairs']} pairs/micro batch, max_seq_len {r['max_seq_len']}, {r['precision']}, "
          f"{r['attn_implementation']} attention, {r['threads']} threads, {r['clock']} clock, "
          f"{r['timed_steps']} timed steps per path")
    print(f"{'path':<66} {'pairs/s':>8} {'speedup':>8} {'real tok':>9} {'util':>6} {'cpu':>5}")
    for name in PATHS:
        p = r["paths"][name]
        speedup = p["pairs_per_s"] / r["baseline_train_pairs_per_s"]
        print(f"{p['label']:<66} {p['pairs_per_s']:>8.2f} {speedup:>7.2f}x {p['epoch_real_token_fraction']:>8.0%} "
              f"{p['real_token_utilization']:>6.0%} {p['cpu_share']:>5.0%}")
    print(f"tokenise: project {r['tokenize_s']:.1f} s, baseline {r['baseline_tokenize_s']:.1f} s "
          f"-> {r['tokenize_speedup']:.1f}x ({r['tokenize_pairs']['baseline']:,} pairs); the Rust tokenizer alone "
          f"over the text once: {r['tokenize_rust_floor_s']:.1f} s (ceiling {r['tokenize_speedup_ceiling']:.1f}x)")
    rss = (f"peak RSS (data + 1 step): project {r['peak_rss_mb']:.0f} MB, baseline {r['baseline_peak_rss_mb']:.0f} MB "
           f"-> {r['peak_rss_ratio']:.2f}; " if "peak_rss_mb" in r else "")
    print(rss + f"data only: project {r['data_peak_rss_mb']:.0f} MB, baseline {r['baseline_data_peak_rss_mb']:.0f} MB "
          f"-> {r['data_peak_rss_ratio']:.2f}")
    print(f"bf16 matmul peak {r['matmul_peak_gflops']:.0f} GFLOP/s (median probe; best {r['matmul_best_gflops']:.0f}); "
          f"real-token utilization (grouped) {r['real_token_utilization']:.2f} of the peak, "
          f"{r['real_token_utilization_vs_best_matmul']:.2f} of the best probe; "
          f"CPU share during training {r['cpu_share_during_training']:.2f}")
