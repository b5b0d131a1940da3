"""Phase-2 preference pairs: split, tokenise, check, blend, and cache them on disk."""
import errno
import hashlib
import json
import os
import shutil
import socket
from collections import Counter

import datasets
import numpy as np
from datasets import Features, List, Value

from data import cache
from data.chat import ChatRenderer
from data.collator import PairCollator
from data.end_token import AUTO, DROP_COLUMNS, RULES, choose, pad_inside
from data.formats import NO_PAIR_FIX, ReadOptions, RowFormat, count_text, normalize
from data.readers import hash_files, one_line
from data.sources import load_source
from data.split import PHASE, parse_data_split, shuffle_idx, split_indices
from data.tokenize import pair_encoder
from utils.dist import barrier, get_rank, print_rank0
from utils.errors import UserError
from utils.spans import DEEPSPEED_CHAT, END_OF_CONVERSATION, loss_spans, pads_at_beginning

CACHE_VERSION = 6  # bump when a change in this package changes the tokenised pairs or the cache layout
LARGE = 100_000  # rows from which tokenisation uses several processes
# What `_pair_codes` finds in a pair. Identical pairs train (ln 2, zero gradient) and count as wrong
# in evaluation, as in DeepSpeed-Chat, unless --drop_identical_pairs; the others cannot be scored.
KEEP, EMPTY, IDENTICAL, FIRST_TOKEN, SAME_TEXT, SCORED_BEFORE_DIFF = range(6)
REASONS = {SAME_TEXT: "chosen same as rejected", IDENTICAL: "identical after truncation", EMPTY: "empty",
           FIRST_TOKEN: "diverge at first token", SCORED_BEFORE_DIFF: "scored before they differ"}
IDENTICAL_CODES = (SAME_TEXT, IDENTICAL)
FEATURES = Features({"chosen_input_ids": List(Value("int32")),
                     "rejected_input_ids": List(Value("int32")),
                     "margin": Value("float32"),  # the source's `margin` column or rating difference, else NaN
                     "drop": Value("int8"),  # the code under DeepSpeed-Chat's end-token rule
                     "drop_last": Value("int8"),  # ... under the last_token rule
                     "pad_inside": Value("int8"),  # a PAD-equal token inside a text (data.end_token)
                     "source": Value("int16")})  # which --data_path the pair came from: its index


def build_pair_datasets(data_paths, data_split, seed, tokenizer, max_seq_len, cache_dir,
                        end_of_conversation_token=END_OF_CONVERSATION, num_padding_at_beginning=1,
                        drop_identical=False, end_token_rule=DEEPSPEED_CHAT, read_options=ReadOptions(),
                        held_out=False):
    """(train, eval) `datasets.Dataset`s of phase-2 pairs, memory-mapped from the on-disk cache; with
    `held_out` (see `build_held_out_set`) a 1-tuple: every pair of the one source, unsplit.

    Rows are {'chosen_input_ids': [...], 'rejected_input_ids': [...], 'margin', 'source'}, unpadded, each the ids of
    `tokenizer(prompt + answer + end_of_conversation_token, truncation=True, max_length=max_seq_len)`;
    conversations are rendered with the tokenizer's chat template and get no end-of-conversation text.
    `source` is the index in `data_paths` of the source the pair came from.
    Pairs the reward model cannot score (see `_pair_codes`; `end_token_rule`, `num_padding_at_beginning`
    and the tokenizer's pad id place the score) are dropped and counted; identical ones only with
    `drop_identical`. `end_token_rule` 'auto' picks one from the data; `build_info` says which and why.
    Local rank 0 builds the cache (or reuses it); the other ranks wait, then read it.
    """
    data_paths = [data_paths] if isinstance(data_paths, str) else list(data_paths)
    if not data_paths:
        raise UserError("--data_path needs at least one source (a hub name, a local file or folder, "
                        "or synthetic/preference).")
    _refuse_repeated_paths(data_paths)
    if not isinstance(max_seq_len, int) or max_seq_len < 2:
        raise UserError(f"--max_seq_len {max_seq_len!r} must be an integer >= 2.")
    if not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise UserError(f"--seed {seed!r} must be an integer in [0, 2**32) (numpy's RandomState shuffles the data).")
    settings = {"version": CACHE_VERSION, "held_out": held_out,
                "data_split": None if held_out else parse_data_split(data_split), "seed": None if held_out else seed,
                "max_seq_len": max_seq_len, "end_of_conversation_token": end_of_conversation_token,
                "tokenizer": tokenizer_identity(tokenizer), "pad_token_id": tokenizer.pad_token_id,
                "num_padding_at_beginning": num_padding_at_beginning, "drop_identical": drop_identical,
                "end_token_rule": end_token_rule, "chat_template": getattr(tokenizer, "chat_template", None),
                "pairs_from_ratings": read_options.pairs_from_ratings, "rating_field": read_options.rating_field}
    if end_token_rule not in (AUTO, *RULES):
        raise UserError(f"main.py --end_token_rule {end_token_rule!r}: use one of {AUTO}, {', '.join(RULES)}.")
    builder = int(os.environ.get("LOCAL_RANK", get_rank())) == 0  # one per node: cache_dir may be node-local
    if builder:
        folder = _build_or_reuse(data_paths, data_split, settings, tokenizer, cache_dir)
    barrier()
    if not builder:
        folder = cache.cache_folder(cache_dir, _load_sources(data_paths, read_options), settings)
        if not cache.is_complete(folder):
            raise UserError(f"{folder}: the tokenised data that local rank 0 should have written is not "
                            "there; check --data_output_path is writable and the data did not change "
                            "while the job started.")
    try:
        pairs = cache.open_cache(folder)
    except cache.CACHE_ERRORS as err:  # rank 0 checked it just now: something else damaged it
        raise UserError(f"{folder}: cannot load the tokenised pairs ({one_line(err)}); delete that folder "
                        "and run again.") from err
    info = build_info(pairs[0])
    if held_out:
        return pairs
    print_rank0(f"data: end-token rule {info['end_token_rule']}: {RULES[info['end_token_rule']]}; because "
                f"{info['reason']}")
    return pairs


def build_held_out_set(path, seed, tokenizer, max_seq_len, cache_dir, end_of_conversation_token,
                       num_padding_at_beginning, drop_identical, end_token_rule, read_options=ReadOptions()):
    """Every pair of one source (a file's rows; a folder's or hub dataset's train and eval splits, in that
    order) as a held-out eval `datasets.Dataset`, tokenised, checked and cached as build_pair_datasets does.
    `end_token_rule` should be the one the training data resolved (not 'auto'), so both are scored alike."""
    try:
        return build_pair_datasets([path], None, seed, tokenizer, max_seq_len, cache_dir, end_of_conversation_token,
                                   num_padding_at_beginning, drop_identical, end_token_rule, read_options, True)[0]
    except UserError as error:  # its messages name --data_path, which reads sources the same way
        raise UserError(f"held-out set {path!r} (--eval_data_path): {error}") from error


def build_info(pairs):
    """What building `pairs` (a split build_pair_datasets returned) decided, from its meta.json:
    end_token_rule, reason, end_of_conversation_token (empty when a chat template rendered the texts), and
    sources: the name each `source` id stands for, as built (a path or hub name)."""
    folder = os.path.dirname(os.path.dirname(pairs.cache_files[0]["filename"]))
    with open(os.path.join(folder, "meta.json")) as f:
        meta = json.load(f)
    return {key: meta[key] for key in ("end_token_rule", "reason", "end_of_conversation_token", "sources")}


def _refuse_repeated_paths(data_paths):
    """The same file or folder twice (also as './d' and 'd/') would train on every pair of it twice."""
    seen = {}
    for path in data_paths:
        key = os.path.realpath(path) if os.path.exists(path) else path
        if key in seen:
            raise UserError(f"--data_path lists the same source twice: {seen[key]!r} and {path!r} "
                            f"(both {key}); its pairs would be trained on twice. Give each source once.")
        seen[key] = path


def _load_sources(data_paths, read_options):
    """Load every source; two that read one file (a folder and its train file) or hold the same data
    (a copied folder) are refused like one source given twice."""
    sources, seen = [], {}
    for path in data_paths:
        source = load_source(path, read_options)
        for key in (source.identity,) + source.files:
            if key in seen:
                what = f"both read {key}" if key in source.files else "hold the same data"
                raise UserError(f"--data_path {seen[key]!r} and {path!r} {what}; those pairs would be trained "
                                "on twice. Give each source once.")
            seen[key] = path
        sources.append(source)
    return sources


def tokenizer_identity(tokenizer):
    """A hash of what decides the token ids: class, vocabulary/merges/processors, special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("truncation", None)  # call-time settings the last call left behind
        state.pop("padding", None)
    else:  # a Python tokenizer: its vocabulary and the files (merges, sentencepiece model) it came from
        files = [v for v in tokenizer.init_kwargs.values() if isinstance(v, str) and os.path.isfile(v)]
        state = [sorted(tokenizer.get_vocab().items()), hash_files(dict(enumerate(files)))]
    parts = [type(tokenizer).__name__, state, tokenizer.special_tokens_map, tokenizer.truncation_side]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _build_or_reuse(data_paths, data_split, settings, tokenizer, cache_dir):
    """The cache folder for these sources and settings: reused if it verifies, else (re)built.

    A build writes `<folder>.tmp-<host>-<pid>` and renames it; one killed mid-way leaves that behind,
    which the next run on the same host removes once the process is gone.
    """
    options = ReadOptions(settings["pairs_from_ratings"], settings["rating_field"])
    sources = _load_sources(data_paths, options)
    folder = cache.cache_folder(cache_dir, sources, settings)
    tmp = f"{folder}.tmp-{socket.gethostname()}-{os.getpid()}"
    if os.path.isdir(cache_dir):
        cache.remove_stale_temps(cache_dir)
    if cache.is_complete(folder):
        meta, problem = cache.verify_cache(folder)
        if problem is None:
            counts = ", ".join(f"{rows:,} {split}" for split, rows in meta["rows"].items())
            print_rank0(f"data: reusing the tokenised pairs in {folder} ({counts})")
            return folder
        print_rank0(f"data: the tokenised pairs in {folder} are damaged ({problem}); rebuilding them")
        cache.discard(folder, tmp)
    render = ChatRenderer(tokenizer)  # every row parsed and rendered before anything is written
    chat = bool(render.template) and any(isinstance(s.adapter, RowFormat) for s in sources)
    sources = [normalize(s, render, options) if isinstance(s.adapter, RowFormat) else s for s in sources]
    try:
        os.makedirs(cache_dir, exist_ok=True)
    except OSError as err:
        raise UserError(f"--data_output_path {cache_dir!r} cannot be created ({err}).") from err
    try:
        _build(tmp, sources, data_split, settings, tokenizer, chat)
        cache.publish(tmp, folder)
    except OSError as err:
        fix = "free some space" if err.errno == errno.ENOSPC else "check that it is writable"
        raise UserError(f"--data_output_path {cache_dir!r}: writing the tokenised pairs failed ({one_line(err)}); "
                        f"{fix}, or point --data_output_path elsewhere.") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # a crash never leaves a complete-looking folder
    print_rank0(f"data: built the tokenised pairs in {folder}")
    return folder


def _build(tmp, sources, data_split, settings, tokenizer, chat):
    """Write train/, eval/ and meta.json (with every file's size) into `tmp`. `chat`: a chat template
    rendered the texts, which then end with the template's own end of turn, not an end-of-conversation text."""
    scratch = os.path.join(tmp, "scratch")
    os.makedirs(scratch)
    eot = "" if chat else settings["end_of_conversation_token"]
    meta = {"settings": settings, "sources": [s.name for s in sources], "rows": {}, "dropped": {},
            "end_of_conversation_token": eot}
    encoders = {}  # the pair encoder picked for the first rows, reused for the rest (see _tokenize)
    lead = pads_at_beginning(tokenizer)
    splits, row_counts = {}, {}
    for split in ("eval",) if settings["held_out"] else ("train", "eval"):
        indexed = _split_rows(sources, split, settings)  # [(source index, rows)]
        parts = [rows for _, rows in indexed]
        row_counts[split] = (sum(map(len, parts)), _unpaired(parts))
        if row_counts[split][0] == 0:
            raise UserError(f"--data_split {data_split!r} leaves no {split} pairs for reward-model training "
                            f"(share {PHASE} rounds to 0 rows of {', '.join(s.name for s in sources)}). "
                            f"Give share {PHASE} a positive value, e.g. '2,4,4'.")
        if sum(row_counts[split][1].values()) == row_counts[split][0]:
            raise _no_usable_pairs(split, sources, *row_counts[split])
        tokenised = [_tokenize(rows, sources[i].adapter, tokenizer, settings,
                               os.path.join(scratch, f"{k}-{split}.arrow"), encoders, eot, lead, i)
                     for k, (i, rows) in enumerate(indexed) if len(rows)]
        if settings["held_out"]:
            splits[split] = datasets.concatenate_datasets(tokenised)
        else:
            splits[split] = _blend(tokenised, settings["seed"]) if len(sources) > 1 else tokenised[0]
    inside = sum(int(np.count_nonzero(pairs.with_format("numpy")["pad_inside"])) for pairs in splits.values())
    meta["end_token_rule"], meta["reason"] = choose(settings["end_token_rule"], chat, inside,
                                                    sum(map(len, splits.values())),
                                                    tokenizer.convert_ids_to_tokens(settings["pad_token_id"]))
    for split, pairs in splits.items():
        total = len(pairs)
        pairs, meta["dropped"][split] = _drop_bad_pairs(pairs, "held-out" if settings["held_out"] else split,
                                                        settings, tokenizer, meta["end_token_rule"])
        if sum(meta["dropped"][split].values()) == total:  # identical pairs are kept but do not count as usable
            raise _no_usable_pairs(split, sources, *row_counts[split], total, meta["dropped"][split])
        pairs.save_to_disk(os.path.join(tmp, split))
        meta["rows"][split] = len(pairs)
    shutil.rmtree(scratch)
    meta["files"] = cache.file_records(tmp)
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)


def _unpaired(parts):
    """{reason: rows} of the rows in `parts` that give no pair (rated rows, all tied or with one completion)."""
    return Counter(reason for rows in parts if "unpaired" in rows.column_names for reason in rows["unpaired"] if reason)


def _no_usable_pairs(split, sources, rows, unpaired, pairs=0, dropped=None):
    """The one error for a split left without a usable pair: its sources, and why, counted by reason."""
    counts = f"{rows:,} rows" + (f", {count_text(unpaired)}" if unpaired else "")
    if pairs:
        counts += (f"; {'the others' if unpaired else 'they'} gave {pairs:,} pairs, none usable: "
                   + ", ".join(f"{n:,} {why}" for why, n in dropped.items() if n))
    fixes = ([NO_PAIR_FIX] if unpaired else []) + (
        ["A pair needs two different, non-empty answers; check --data_path, and --max_seq_len if the answers only "
         "differ after the truncation point."] if pairs else [])
    return UserError(f"--data_path {', '.join(repr(s.name) for s in sources)}: no usable {split} pairs: {counts}. "
                     f"{' '.join(fixes)}")


def _split_rows(sources, split, settings):
    """[(source index, rows)] for `split`: each source's phase-2 rows, or for a held-out set every row of its
    one source (train, then eval where it has one)."""
    if settings["held_out"]:
        return [(0, rows) for rows in (sources[0].train, sources[0].eval) if rows is not None]
    return [(i, _phase2_rows(s, split, settings)) for i, s in enumerate(sources)]


def _phase2_rows(source, split, settings):
    """The rows of `source` reward-model training uses for `split` ('train' or 'eval'), in order."""
    seed = settings["seed"]
    if source.eval is None:  # train-only source: DeepSpeed-Chat first cuts it 9:1 into train/eval
        chunk = 0 if split == "train" else 1
        rows = source.train.select(split_indices(len(source.train), [9.0, 1.0], chunk, seed), keep_in_memory=True)
    else:
        rows = source.train if split == "train" else source.eval
    return rows.select(split_indices(len(rows), settings["data_split"], PHASE - 1, seed), keep_in_memory=True)


def _tokenize(rows, adapter, tokenizer, settings, cache_file, encoders, eot, lead, source=0):
    """Map raw rows (each gives `adapter.pairs(row)`) to chosen/rejected token ids, the `drop` codes of
    both end-token rules (KEEP or why the pair is unusable), `pad_inside` (`lead` PAD-equal tokens
    start every text) and the `source` index.

    `encoders` holds the pair encoder once the first batch has picked it; each worker of a
    multi-process map gets a copy of the empty dict and picks its own.
    """
    max_len, pad_id, n = settings["max_seq_len"], settings["pad_token_id"], settings["num_padding_at_beginning"]

    def encode(batch):
        size = len(next(iter(batch.values())))
        parts = [pair for i in range(size) for pair in adapter.pairs({k: v[i] for k, v in batch.items()})]
        if not parts:  # rated completions that all tied
            return {name: [] for name in FEATURES}
        texts = [(p + c, p + r) for p, c, r, _ in parts]
        chosen_texts, rejected_texts = [c + eot for c, _ in texts], [r + eot for _, r in texts]
        if "pairs" not in encoders:
            encoders["pairs"] = pair_encoder(tokenizer, max_len, chosen_texts[:64], rejected_texts[:64])
        chosen, rejected = encoders["pairs"](chosen_texts, rejected_texts)
        answers = [(c, r) for _, c, r, _ in parts]
        drop, drop_last = (_pair_codes(texts, chosen, rejected, pad_id, n, answers, rule) for rule in DROP_COLUMNS)
        inside = [pad_inside(c, pad_id, lead) or pad_inside(r, pad_id, lead) for c, r in zip(chosen, rejected)]
        return {"chosen_input_ids": chosen, "rejected_input_ids": rejected, "margin": _margins([m for *_, m in parts]),
                "drop": drop, "drop_last": drop_last, "pad_inside": inside, "source": [source] * len(parts)}

    return rows.map(encode, batched=True, remove_columns=rows.column_names, features=FEATURES,
                    num_proc=min(os.cpu_count() or 1, 8) if len(rows) >= LARGE else None,
                    cache_file_name=cache_file, desc="Tokenising pairs",
                    new_fingerprint=hashlib.sha256(cache_file.encode()).hexdigest()[:32])  # skips hashing `encode`


def _margins(values):
    """The optional `margin` column as floats (NaN where absent)."""
    try:
        return [float("nan") if m is None else float(m) for m in values]
    except (TypeError, ValueError) as err:
        raise UserError(f"the 'margin' column must hold numbers ({err}); fix it or drop the column.") from err


def _pair_codes(texts, chosen_ids, rejected_ids, pad_id, num_padding_at_beginning, answers=None,
                end_token_rule=DEEPSPEED_CHAT):
    """One code per pair: KEEP, or what `REASONS` says, found with the loss's own `loss_spans`.

    `texts` are the (chosen, rejected) texts, `answers` the answers alone (default: the texts); a pair
    is EMPTY when either answer is empty or only whitespace: there is nothing to prefer.
    """
    rows = [{"chosen_input_ids": c, "rejected_input_ids": r} for c, r in zip(chosen_ids, rejected_ids)]
    batch = PairCollator(pad_id)(rows)
    ids, mask, size = batch["input_ids"], batch["attention_mask"], len(rows)
    chosen, rejected = ids[:size], ids[size:]
    start, end, _, _ = loss_spans(chosen, rejected, pad_id, num_padding_at_beginning, mask[:size], mask[size:],
                                  end_token_rule)
    identical = (chosen == rejected).all(dim=1).tolist()
    codes = []
    for (chosen_text, rejected_text), (chosen_answer, rejected_answer), same, first, last in zip(
            texts, answers or texts, identical, start.tolist(), end.tolist()):
        if not chosen_answer.strip() or not rejected_answer.strip():
            codes.append(EMPTY)
        elif same:
            codes.append(SAME_TEXT if chosen_text == rejected_text else IDENTICAL)  # IDENTICAL: past --max_seq_len
        elif first == 0:
            codes.append(FIRST_TOKEN)  # DeepSpeed-Chat asserts the first difference is past position 0
        else:
            codes.append(SCORED_BEFORE_DIFF if last == first else KEEP)
    return codes


def _blend(parts, seed):
    """Concatenate the sources' pairs and permute them with RandomState(seed), as DeepSpeed-Chat does."""
    joined = datasets.concatenate_datasets(parts)
    return joined.select(shuffle_idx(seed, len(joined)), keep_in_memory=True)


def _drop_bad_pairs(pairs, split, settings, tokenizer, end_token_rule=DEEPSPEED_CHAT):
    """Remove the pairs that cannot be scored under `end_token_rule` (and identical ones if asked), print one
    line of counts, and return (pairs, counts by reason, identical ones counted even where kept)."""
    column = DROP_COLUMNS[end_token_rule]
    codes = pairs.select_columns([column]).with_format("numpy")[:][column]  # one Arrow read, not a row loop
    counts = np.bincount(codes.astype(np.int64), minlength=len(REASONS) + 1)  # no pairs read as float32
    dropped_codes = [c for c in REASONS if settings["drop_identical"] or c not in IDENTICAL_CODES]
    keep = np.flatnonzero(~np.isin(codes, dropped_codes))
    summary = ", ".join(f"{counts[c]:,} {REASONS[c]}" for c in dropped_codes)
    line = f"data: {split}: kept {len(keep):,} of {len(codes):,} pairs: dropped {summary}"
    if not settings["drop_identical"]:
        line += (f"; kept {sum(counts[c] for c in IDENTICAL_CODES):,} identical pairs as DeepSpeed-Chat does "
                 "(--drop_identical_pairs drops them)")
    print_rank0(line)
    if counts[SCORED_BEFORE_DIFF]:
        _report_scored_before_diff(counts[SCORED_BEFORE_DIFF], len(codes), split, settings, tokenizer)
    return pairs.select(keep, keep_in_memory=True).remove_columns(["drop", "drop_last", "pad_inside"]), {
        REASONS[c]: int(counts[c]) for c in REASONS}


def _report_scored_before_diff(count, total, split, settings, tokenizer):
    """Pairs whose score is read at or before their first difference: a warning, or an error when most are."""
    n, pad_id = settings["num_padding_at_beginning"], settings["pad_token_id"]
    message = (f"{count:,} of {total:,} {split} pairs are scored at or before the first token where chosen and "
               f"rejected differ, so both answers get the same score and a 0/0 loss. The score is read before "
               f"the {n + 1}. token equal to the PAD id {pad_id} ({tokenizer.convert_ids_to_tokens(pad_id)!r}), "
               f"and in these pairs that token occurs {n + 1} time(s) before the answers differ. Likely causes: "
               "the EOS/PAD token inside the text (e.g. a chat template that ends every turn with it), or "
               f"main.py --num_padding_at_beginning {n} (1 when the tokenizer's BOS equals its PAD, as OPT's; else "
               "0). main.py --end_token_rule last_token (or auto) reads the score at the last attended token instead.")
    if 2 * count > total:
        raise UserError(message + " Fix the data or the flag.")
    print_rank0(f"warning: {message} They are dropped.")


