"""Token ids for chosen/rejected texts, equal to the tokenizer's own, computed fast.

Every encoder here returns exactly `tokenizer(texts, truncation=True, max_length=max_len)['input_ids']`
for the chosen and the rejected texts; `pair_encoder` picks the fastest one that gives those ids on
a sample, so a tokenizer none of the fast paths understands still gets its own ids.
"""
import json

from tokenizers import Tokenizer

WHITESPACE = " \t\n\r\f\v"  # \s in any regex flavour


def pair_encoder(tokenizer, max_len, chosen, rejected):
    """(chosen_texts, rejected_texts) -> (chosen_ids, rejected_ids), the fastest exact way.

    1. shared prefix (byte-level BPE with GPT-2's pre-tokenizer: GPT-2, OPT, ...): the text both
       answers share, usually the prompt, is tokenised once, not twice (see `split_point`);
    2. the Rust backend's `encode_batch_fast` (no offsets, no per-token Python objects);
    3. the tokenizer itself.
    `chosen` and `rejected` are sample texts each candidate must get right.
    """
    def with_tokenizer(chosen, rejected):
        return tuple(tokenizer(texts, truncation=True, max_length=max_len)["input_ids"] for texts in (chosen, rejected))

    expected = with_tokenizer(chosen, rejected)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch_fast"):
        state = backend.to_str()  # the Rust tokenizer as JSON: the candidates copy it
        for make in (_shared_prefix_encoder, _backend_encoder):
            candidate = make(tokenizer, state, max_len)
            if candidate is not None and candidate(chosen, rejected) == expected:
                return candidate
    return with_tokenizer


def _rust_copy(state):
    """A copy of the fast tokenizer's Rust backend from its JSON `state` (the user's keeps its settings)."""
    rust = Tokenizer.from_str(state)
    rust.no_padding()
    return rust


def _backend_encoder(tokenizer, state, max_len):
    rust = _rust_copy(state)
    rust.enable_truncation(max_len, direction=tokenizer.truncation_side)

    def with_backend(chosen, rejected):
        encodings = rust.encode_batch_fast(chosen + rejected, add_special_tokens=True)
        return [e.ids for e in encodings[:len(chosen)]], [e.ids for e in encodings[len(chosen):]]
    return with_backend


def _shared_prefix_encoder(tokenizer, state, max_len):
    """ids(text) = specials + ids(text[:k]) + ids(text[k:]) at a split point k, truncated on the right."""
    if tokenizer.truncation_side != "right" or not _splits_like_gpt2(json.loads(state)):
        return None
    rust = _rust_copy(state)
    rust.no_truncation()
    specials = rust.encode("", add_special_tokens=True).ids
    probe = "Human: it's 42 degrees?\n\nAssistant:  Yes"
    if rust.encode(probe, add_special_tokens=True).ids != specials + rust.encode(probe, add_special_tokens=False).ids:
        return None  # the post-processor adds more than a prefix (e.g. a trailing [SEP])

    def with_shared_prefix(chosen, rejected):
        cuts = [split_point(c, r) for c, r in zip(chosen, rejected)]
        pieces = ([c[:k] for c, k in zip(chosen, cuts)] + [c[k:] for c, k in zip(chosen, cuts)]
                  + [r[k:] for r, k in zip(rejected, cuts)])
        ids = [e.ids for e in rust.encode_batch_fast(pieces, add_special_tokens=False)]
        n = len(chosen)
        heads = [specials + head for head in ids[:n]]
        return ([(head + tail)[:max_len] for head, tail in zip(heads, ids[n:2 * n])],
                [(head + tail)[:max_len] for head, tail in zip(heads, ids[2 * n:])])
    return with_shared_prefix


def _splits_like_gpt2(state):
    """True when the text is cut into words by GPT-2's regex alone: no normalizer, a plain ByteLevel
    pre-tokenizer, deterministic BPE, and no added token that holds or strips whitespace."""
    pre = state.get("pre_tokenizer") or {}
    return (state.get("normalizer") is None and state["model"].get("type") == "BPE"
            and not state["model"].get("dropout")
            and pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space")
            and not any(t.get("lstrip") or t.get("rstrip") or any(ch.isspace() for ch in t["content"])
                        for t in state.get("added_tokens", [])))


def split_point(a, b):
    """The largest k within the common prefix of `a` and `b` where both texts have a printable,
    non-space character at k-1 and whitespace at k; 0 if there is none.

    GPT-2's pre-tokenizer regex always ends a word there (no pattern takes trailing whitespace) and
    matches what follows from k on its own (no look-behind), so for byte-level BPE
    ids(a) = ids(a[:k]) + ids(a[k:]), and the same for b.
    """
    k = _common_prefix_length(a, b)
    while k > 0:
        if (k < len(a) and k < len(b) and a[k] in WHITESPACE and b[k] in WHITESPACE
                and a[k - 1].isprintable() and not a[k - 1].isspace()):
            return k
        k -= 1
    return 0


def _common_prefix_length(a, b):
    low, high = 0, min(len(a), len(b))
    while low < high:  # binary search: a few slice comparisons in C instead of a loop per character
        mid = (low + high + 1) // 2
        if a[:mid] == b[:mid]:
            low = mid
        else:
            high = mid - 1
    return low
