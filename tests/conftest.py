import pytest


@pytest.fixture(scope="session")
def opt_tokenizer(tmp_path_factory):
    """The tiny OPT's tokenizer, loaded as main.py loads it: `</s>` BOS, pad = eos = `</s>`."""
    from transformers import AutoTokenizer

    from model.tiny import build_tiny_opt
    path = build_tiny_opt(str(tmp_path_factory.mktemp("tiny_opt")))
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
