"""Session fixtures: tiny models and data built once in temp folders (nothing is downloaded)."""
import pytest

from tests.fixtures import DIST_ENV, learnable_pairs, write_jsonl


@pytest.fixture(scope="session")
def opt_tokenizer(tiny_opt):
    """The tiny OPT's tokenizer, loaded as main.py loads it: `</s>` BOS, pad = eos = `</s>`."""
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(tiny_opt)
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@pytest.fixture(scope="session")
def tiny_opt(tmp_path_factory):
    """A tiny OPT folder (random weights, tokenizer trained on the fly, opt-350m's conventions)."""
    from model.tiny import build_tiny_opt
    return build_tiny_opt(str(tmp_path_factory.mktemp("tiny_opt")))


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory):
    """A tiny GPT-2 folder: no BOS, EOS = PAD = `<|endoftext|>`, so num_padding_at_beginning is 0."""
    from model.tiny import build_tiny_gpt2
    return build_tiny_gpt2(str(tmp_path_factory.mktemp("tiny_gpt2")))


@pytest.fixture(scope="session")
def tiny_chat(tmp_path_factory):
    """tiny_chat(style) -> a tiny chat model folder of that style (model/tiny.py's CHAT_STYLES), built once."""
    from model.tiny import build_tiny_chat
    built = {}

    def get(style):
        if style not in built:
            built[style] = build_tiny_chat(str(tmp_path_factory.mktemp(f"tiny_{style}")), style)
        return built[style]
    return get


def _pair_folder(tmp_path_factory, name, train, test):
    folder = tmp_path_factory.mktemp(name)
    write_jsonl(folder / "train.jsonl", learnable_pairs(train, seed=1))
    write_jsonl(folder / "test.jsonl", learnable_pairs(test, seed=2))
    return str(folder)


@pytest.fixture(scope="session")
def pair_folder(tmp_path_factory):
    """train.jsonl (384 pairs) and test.jsonl (96) of a rule a tiny model learns in seconds."""
    return _pair_folder(tmp_path_factory, "pairs", 384, 96)


@pytest.fixture(scope="session")
def small_pair_folder(tmp_path_factory):
    """train.jsonl (64 pairs: 8 steps of 8) and test.jsonl (16) for runs that are killed, resumed, damaged."""
    return _pair_folder(tmp_path_factory, "small_pairs", 64, 16)


@pytest.fixture
def clean_dist_env(monkeypatch):
    """For tests that call main.main() in this process: it sets RANK, MASTER_PORT, ... here; they are
    undone afterwards so later subprocesses pick their own. The process group itself stays: DeepSpeed
    keeps the groups of the first engine built in a process, and a destroyed group would leave them dead."""
    for key in DIST_ENV:
        monkeypatch.delenv(key, raising=False)
    yield
