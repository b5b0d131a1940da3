"""Build tiny, randomly initialised causal LMs with a tokenizer trained on the fly.

Used by the tests and the offline demo: nothing is downloaded. The OPT variant follows
opt-350m's conventions: `</s>` is prepended as BOS, eos is `</s>`, `word_embed_proj_dim`
differs from `hidden_size`, and layer norm comes after attention (`do_layer_norm_before=False`).
The chat variants (`CHAT_STYLES`: Llama-, Qwen2- and Mistral-style) carry a chat template written
here whose turns end with the EOS token, as their real counterparts' do.
"""
import functools
import os

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

OPT_SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>"]  # ids 0..3, as in OPT's vocab
GPT2_SPECIAL_TOKENS = ["<|endoftext|>"]

DEFAULT_CORPUS = [
    "Human: What is the capital of France? Assistant: The capital of France is Paris.",
    "Human: How do I bake bread? Assistant: Mix flour, water, salt and yeast, then bake it.",
    "Human: Tell me a joke. Assistant: I would rather not. That is a terrible idea.",
    "The quick brown fox jumps over the lazy dog. Thanks, that was helpful and kind!",
    "I love this, it is wonderful, great, excellent and friendly. I hate that; it is awful.",
    "<|endoftext|> 0123456789 [1] [2] (a) {b} - ; : ' \" ? ! . ,",
]


def train_bpe_tokenizer(corpus, special_tokens, vocab_size=512, bos=None):
    """A byte-level BPE tokenizer; with `bos`, that token is prepended like OPT's tokenizer."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    if bos is not None:
        bos_id = tokenizer.token_to_id(bos)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, bos_id)])
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


# facebook/opt-125m's and opt-350m's shapes (opt-350m, the card's model: post-LN, 512-wide projections), with
# their 50,272 embedding rows, for benchmarks with random weights (evaluation_scripts/random_reward_model.py).
OPT_SHAPES = {
    "125m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, ffn_dim=3072,
                 word_embed_proj_dim=768, do_layer_norm_before=True),
    "350m": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, ffn_dim=4096,
                 word_embed_proj_dim=512, do_layer_norm_before=False),
}
OPT_VOCAB_SIZE = 50272


def write_opt_shape(path, shape, tokenizer=None):
    """Write the config of an OPT of `shape` (`OPT_SHAPES`) and `tokenizer` (default: a tiny BPE one) to `path`,
    no weights: `build_reward_model(..., weights="random")` builds it. Returns `path`."""
    from transformers import OPTConfig
    tokenizer = tokenizer or PreTrainedTokenizerFast(
        tokenizer_object=train_bpe_tokenizer(DEFAULT_CORPUS, OPT_SPECIAL_TOKENS, 512, bos="</s>"),
        bos_token="</s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>", model_max_length=2048)
    config = OPTConfig(vocab_size=OPT_VOCAB_SIZE, max_position_embeddings=2048, dropout=0.1, attention_dropout=0.0,
                       activation_function="relu", pad_token_id=1, bos_token_id=2, eos_token_id=2, **OPT_SHAPES[shape])
    os.makedirs(path, exist_ok=True)
    config.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_tiny_opt(path, corpus=None, vocab_size=512, hidden_size=64, word_embed_proj_dim=32,
                   num_layers=2, num_heads=4, ffn_dim=128, max_positions=512, seed=0):
    """Write a tiny OPT (random weights) and its tokenizer to `path`; returns `path`."""
    from transformers import OPTConfig
    tokenizer = train_bpe_tokenizer(corpus or DEFAULT_CORPUS, OPT_SPECIAL_TOKENS, vocab_size, bos="</s>")
    hf_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="</s>", eos_token="</s>", unk_token="<unk>",
        pad_token="<pad>", model_max_length=max_positions)
    config = OPTConfig(
        vocab_size=len(hf_tokenizer), hidden_size=hidden_size, word_embed_proj_dim=word_embed_proj_dim,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, ffn_dim=ffn_dim,
        max_position_embeddings=max_positions, do_layer_norm_before=False, dropout=0.1,
        pad_token_id=1, bos_token_id=2, eos_token_id=2)
    return _save(path, config, hf_tokenizer, seed)


def build_tiny_gpt2(path, corpus=None, vocab_size=512, hidden_size=64, num_layers=2, num_heads=4,
                    max_positions=512, seed=0):
    """A tiny GPT-2-style model: no BOS, eos `<|endoftext|>` (so num_padding_at_beginning is 0)."""
    from transformers import GPT2Config
    tokenizer = train_bpe_tokenizer(corpus or DEFAULT_CORPUS, GPT2_SPECIAL_TOKENS, vocab_size)
    hf_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
        unk_token="<|endoftext|>", model_max_length=max_positions)
    config = GPT2Config(vocab_size=len(hf_tokenizer), n_embd=hidden_size, n_layer=num_layers,
                        n_head=num_heads, n_positions=max_positions, bos_token_id=0, eos_token_id=0)
    return _save(path, config, hf_tokenizer, seed)


LLAMA_TEMPLATE = (  # Llama-3-like: a header per turn, every turn closed by EOS <|eot_id|>
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
QWEN2_TEMPLATE = (  # ChatML: <|im_start|>role ... <|im_end|> (EOS); no BOS; PAD <|endoftext|>
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
MISTRAL_TEMPLATE = (  # [INST] user [/INST] answer</s>, user and assistant turns only
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% elif m['role'] == 'assistant' %} {{ m['content'] }}{{ eos_token }}"
    "{% else %}{{ raise_exception('this template has only user and assistant turns') }}{% endif %}{% endfor %}")
# style -> (config class name, special tokens, BOS prepended, tokens: bos/eos/pad/unk, template)
CHAT_STYLES = {
    "llama": ("LlamaConfig", ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"], True,
              {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}, LLAMA_TEMPLATE),
    "qwen2": ("Qwen2Config", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], False,
              {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, QWEN2_TEMPLATE),
    "mistral": ("MistralConfig", ["<unk>", "<s>", "</s>"], True,
                {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, MISTRAL_TEMPLATE),
}
CHAT_CORPUS = DEFAULT_CORPUS + [
    "user assistant system [INST] [/INST] Hello! How are you? Tell me more about it, please.",
    "Thanks, that was great, wonderful, helpful, kind, excellent and friendly. That is awful, terrible, rude.",
]


def build_tiny_chat(path, style="llama", corpus=None, vocab_size=512, hidden_size=64, num_layers=2, num_heads=4,
                    max_positions=512, seed=0):
    """A tiny chat model of `style` (see CHAT_STYLES): random weights, its chat template, EOS ending every turn."""
    import transformers
    config_name, specials, adds_bos, tokens, template = CHAT_STYLES[style]
    tokenizer = train_bpe_tokenizer(corpus or CHAT_CORPUS, specials, vocab_size,
                                    bos=tokens["bos_token"] if adds_bos else None)
    hf_tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=max_positions, **tokens)
    hf_tokenizer.chat_template = template
    ids = {f"{name[:-6]}_token_id": hf_tokenizer.convert_tokens_to_ids(token) for name, token in tokens.items()
           if name != "unk_token"}
    config = getattr(transformers, config_name)(
        vocab_size=len(hf_tokenizer), hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, num_key_value_heads=num_heads // 2, intermediate_size=2 * hidden_size,
        max_position_embeddings=max_positions, tie_word_embeddings=False, **ids)
    return _save(path, config, hf_tokenizer, seed)


def _save(path, config, hf_tokenizer, seed):
    import torch
    torch.manual_seed(seed)
    os.makedirs(path, exist_ok=True)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path)
    hf_tokenizer.save_pretrained(path)
    return path


def main(argv=None):
    """`python -m model.tiny OUT_DIR [--arch opt|gpt2|llama|qwen2|mistral] [--corpus FILE.txt]`: write a tiny model."""
    import argparse
    parser = argparse.ArgumentParser(description=main.__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("output_dir", help="Folder to write the model and tokenizer to.")
    parser.add_argument("--arch", choices=["opt", "gpt2", *CHAT_STYLES], default="opt",
                        help="Model family (llama, qwen2, mistral: chat models with a chat template).")
    parser.add_argument("--corpus", default=None, help="Text file (one text a line) to train the tokenizer on.")
    parser.add_argument("--hidden_size", type=int, default=64, help="Hidden width.")
    parser.add_argument("--num_layers", type=int, default=2, help="Transformer layers.")
    parser.add_argument("--seed", type=int, default=0, help="Seed for the random weights.")
    args = parser.parse_args(argv)
    corpus = None
    if args.corpus:
        with open(args.corpus) as f:
            corpus = [line.rstrip("\n") for line in f if line.strip()] + DEFAULT_CORPUS
    builders = {"opt": build_tiny_opt, "gpt2": build_tiny_gpt2,
                **{style: functools.partial(build_tiny_chat, style=style) for style in CHAT_STYLES}}
    builders[args.arch](args.output_dir, corpus=corpus, hidden_size=args.hidden_size, num_layers=args.num_layers,
                        seed=args.seed)
    print(f"wrote a tiny {args.arch} model to {args.output_dir}")


if __name__ == "__main__":
    main()
