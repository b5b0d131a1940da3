"""Synthetic HH-harmless-like preference pairs and a BPE tokenizer trained on them (offline).

Lengths follow the Anthropic HH harmless test split: a whole conversation (prompt + one
answer) is lognormal in words, median 91, p90 248, p95 317, clipped to 750; the chosen answer is
the longer one in 43% of pairs. Words are drawn from a Zipf law over ~100 English function words
and 30k pseudo-words, so a byte-level BPE with a 16k vocabulary splits text like a real tokenizer
splits English (~1.3 tokens a word; measured and reported by the benchmark).
"""
import json
import os
import random

import numpy as np

MEDIAN_WORDS, P90_WORDS, P95_WORDS, MAX_WORDS, MIN_WORDS = 91, 248, 317, 750, 8
# lognormal: quantile q is median * exp(z_q sigma); least-squares sigma through p90 (z 1.2816) and p95 (z 1.6449)
SIGMA = float((1.2816 * np.log(P90_WORDS / MEDIAN_WORDS) + 1.6449 * np.log(P95_WORDS / MEDIAN_WORDS))
              / (1.2816 ** 2 + 1.6449 ** 2))
CHOSEN_LONGER = 0.43

FUNCTION_WORDS = (
    "the of and to a in is it you that he was for on are with as I his they be at one have this from "
    "or had by not but what some we can out other were all there when up use your how said an each she "
    "which do their time if will way about many then them would write like so these her long make thing "
    "see him two has look more day could go come did no most my over know than call who may down side "
    "been now find any new work part take get place made live where after back little only round man "
    "year came show every good me give our under name very through just form much great think say help "
    "low line before turn cause same mean differ move right boy old too does tell sentence set three "
    "want air well also play small end put home read hand port large spell add even land here must big "
    "high such follow act why ask men change went light kind off need house picture try us again animal "
    "point mother world near build self earth father").split()
CONSONANTS = ["b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "st",
              "tr", "ch", "sh", "th", "pr", "br", "cl", "gr"]
VOWELS = ["a", "e", "i", "o", "u", "ea", "ou", "ai", "io"]
CODAS = ["", "", "", "n", "r", "s", "t", "l", "nd", "st", "ng", "ck", "m", "rt"]


class WordSource:
    """Zipf-distributed English-like words, deterministic from the seed."""

    def __init__(self, seed, pseudo_words=30000, zipf_exponent=1.05):
        rng = random.Random(seed)
        pseudo = set()
        while len(pseudo) < pseudo_words:
            syllables = rng.choice([1, 1, 2, 2, 2, 3])
            pseudo.add("".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) + rng.choice(CODAS)
                               for _ in range(syllables)))
        # shorter words are more frequent, as in natural language
        self.words = np.array(FUNCTION_WORDS + sorted(pseudo, key=lambda w: (len(w), w)), dtype=object)
        weights = 1.0 / (np.arange(len(self.words)) + 2.7) ** zipf_exponent
        self.cdf = np.cumsum(weights) / weights.sum()
        self.rng = np.random.default_rng(seed)

    def sentence_text(self, count):
        """`count` words as sentences of 4-18 words, capitalised, with commas and end marks."""
        words = self.words[np.searchsorted(self.cdf, self.rng.random(count))].tolist()
        out, i = [], 0
        while i < count:
            n = min(int(self.rng.integers(4, 19)), count - i)
            sentence = words[i:i + n]
            sentence[0] = sentence[0].capitalize()
            if n > 6 and self.rng.random() < 0.4:
                comma = int(self.rng.integers(2, n - 2))
                sentence[comma] += ","
            out.append(" ".join(sentence) + self.rng.choice([".", ".", ".", "?", "!"]))
            i += n
        return " ".join(out)


def conversation_words(rng, count):
    """(count,) whole-conversation lengths in words: lognormal fit of the HH harmless test split (median 91 words, p95 317, max 750), clipped."""
    words = rng.lognormal(np.log(MEDIAN_WORDS), SIGMA, size=count)
    return np.clip(np.round(words), MIN_WORDS, MAX_WORDS).astype(int)


def make_pairs(count, seed=0):
    """`count` rows {'prompt', 'chosen', 'rejected'} in HH style ('\\n\\nHuman: ... \\n\\nAssistant:')."""
    source = WordSource(seed)
    rng = np.random.default_rng(seed + 1)
    totals = conversation_words(rng, count)
    rows = []
    for total in totals:
        prompt_words = max(4, int(total * rng.uniform(0.3, 0.75)))
        answer = max(1, total - prompt_words)
        other = int(np.clip(round(answer * np.exp(rng.normal(0.0, 0.6))), 1, MAX_WORDS - prompt_words))
        if other == answer:  # a tie would make "chosen is longer" rarer than CHOSEN_LONGER
            other = answer + 1 if answer + 1 <= MAX_WORDS - prompt_words else answer - 1
        longer, shorter = max(answer, other), min(answer, other)
        chosen, rejected = (longer, shorter) if rng.random() < CHOSEN_LONGER else (shorter, longer)
        rows.append({"prompt": _prompt(source, prompt_words), "chosen": " " + source.sentence_text(chosen),
                     "rejected": " " + source.sentence_text(rejected)})
    return rows


def _prompt(source, words):
    """HH-style turns holding `words` words in all, counting the 'Human:'/'Assistant:' markers."""
    turns = 1 + int(words > 60) + int(words > 160)
    text, left = "", words - 2 * turns  # markers: 'Human:' and 'Assistant:' per turn
    for turn in range(turns):
        share = max(1, left // (turns - turn))
        human = share if turn == turns - 1 else max(1, share // 2)
        text += "\n\nHuman: " + source.sentence_text(human)
        if turn < turns - 1:
            text += "\n\nAssistant: " + source.sentence_text(max(1, share - human))
        left -= share
    return text + "\n\nAssistant:"


def length_summary(rows):
    """Word counts of prompt + chosen conversations: median/p90/p95/max, and how often chosen is longer."""
    words = np.array([len((r["prompt"] + r["chosen"]).split()) for r in rows])
    chosen_longer = np.mean([len(r["chosen"].split()) > len(r["rejected"].split()) for r in rows])
    return {"median": float(np.median(words)), "p90": float(np.percentile(words, 90)),
            "p95": float(np.percentile(words, 95)), "max": int(words.max()),
            "chosen_longer": float(chosen_longer)}


def write_pair_folder(folder, count, seed=0, eval_count=64):
    """train.jsonl (`count` pairs) and test.jsonl (`eval_count`), read by data/ as a local source."""
    os.makedirs(folder, exist_ok=True)
    rows = make_pairs(count + eval_count, seed)
    for name, part in (("train.jsonl", rows[:count]), ("test.jsonl", rows[count:])):
        with open(os.path.join(folder, name), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in part)
    return rows[:count]


def build_tokenizer(folder, rows, vocab_size=16000, max_length=2048):
    """Train a byte-level BPE with OPT's conventions (`</s>` BOS, pad = eos = `</s>`) and save it."""
    from transformers import PreTrainedTokenizerFast

    from model.tiny import OPT_SPECIAL_TOKENS, train_bpe_tokenizer
    corpus = [r["prompt"] + r["chosen"] for r in rows] + [r["rejected"] for r in rows]
    tokenizer = train_bpe_tokenizer(corpus, OPT_SPECIAL_TOKENS, vocab_size, bos="</s>")
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="</s>", eos_token="</s>",
                            unk_token="<unk>", pad_token="<pad>",
                            model_max_length=max_length).save_pretrained(folder)
    return load_tokenizer(folder)


def load_tokenizer(folder):
    """As main.py loads it (model/create.py): right padding, pad = eos."""
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer
