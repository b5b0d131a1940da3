"""data/tokenize.py: every fast encoder gives exactly the tokenizer's own ids.

Run: .venv/bin/python -m pytest tests/test_data_tokenize.py -q
"""
import pytest

from data.tokenize import pair_encoder, split_point

EOT = "<|endoftext|>"
P = "\n\nHuman: What's the capital of France?\n\nAssistant:"
PAIRS = [  # (chosen, rejected), built to break a wrong split
    (P + " Paris, of course.", P + " I don't know."),
    (P + " Paris is it", P + " Paris isn't it"),             # shared answer start, divergence mid-word
    (P + "\n\nParis.", P + "  Lyon?"),                      # newline vs double space after the prompt
    (P + " ", P + "\tno"),                                  # whitespace-only answer
    (P + "Paris", P + "Lyon"),                             # no space after the prompt
    ("word" * 50 + " tail a", "word" * 50 + " tail b"),     # one long shared word
    ("café  déjà vu 東京 😀 x", "café  déjà vu 東京 😀 y"),  # non-ASCII, double space
    ("a\u200b b", "a\u200b c"),                             # zero-width space before the split
    ("a\u00a0 b", "a\u00a0 c"),                             # no-break space before the split
    ("same text", "same text"),
    ("", "different"),
    (P + EOT + " more" + " x" * 300, P + EOT + " more" + " y" * 300),  # special token inside, truncated
]


def texts(pairs):
    return [c + EOT for c, _ in pairs], [r + EOT for _, r in pairs]


def test_split_point_is_at_a_word_start_inside_the_shared_text():
    assert split_point("ab cd", "ab ce") == 2
    assert split_point("ab  cd", "ab  ce") == 2  # before the whole whitespace run
    assert split_point("abc", "abd") == 0
    assert split_point("a\u00a0 b", "a\u00a0 c") == 0  # NBSP is whitespace: no split after it


@pytest.mark.parametrize("max_len", [512, 20])
def test_shared_prefix_encoder_matches_the_tokenizer(opt_tokenizer, max_len):
    chosen, rejected = texts(PAIRS)
    encode = pair_encoder(opt_tokenizer, max_len, chosen[:2], rejected[:2])
    assert encode.__name__ == "with_shared_prefix"  # the OPT/GPT-2 byte-level tokenizer takes the fast path
    want = tuple(opt_tokenizer(t, truncation=True, max_length=max_len)["input_ids"] for t in (chosen, rejected))
    assert encode(chosen, rejected) == want


def test_left_truncation_falls_back_to_an_exact_encoder(opt_tokenizer):
    chosen, rejected = texts(PAIRS)
    opt_tokenizer.truncation_side = "left"
    try:
        encode = pair_encoder(opt_tokenizer, 20, chosen, rejected)
        assert encode.__name__ == "with_backend"
        want = tuple(opt_tokenizer(t, truncation=True, max_length=20)["input_ids"] for t in (chosen, rejected))
        assert encode(chosen, rejected) == want
    finally:
        opt_tokenizer.truncation_side = "right"
