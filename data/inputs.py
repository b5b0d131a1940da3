"""How a text becomes a reward model's input: training's rule, for every entry point that scores texts.

Training tokenises `prompt + answer + end_of_conversation_token`, or a conversation (a message list, checked
by data/chat.py's rules and rendered with the chat template; a BOS the template writes is dropped and the
tokenizer adds its own) with no end-of-conversation text, each cut at max_seq_len tokens. `ModelInputs`
applies that rule for evaluate.py --score, benchmark.py, the server and the export's recipe, so one text
gets one score wherever it is scored (tests/test_same_score.py).
"""
from data.chat import ChatRenderer, conversation, prompt_messages


class ModelInputs:
    """Texts and token ids of a reward model's inputs. `settings`: the model's (utils/settings.py);
    `tokenizer`: `model.create.build_tokenizer(settings, ...)`."""

    def __init__(self, tokenizer, settings, max_seq_len=None):
        self.tokenizer, self.settings = tokenizer, settings
        self.max_seq_len = max_seq_len or settings.max_seq_len
        self.renderer = ChatRenderer(tokenizer)

    def answer_text(self, prompt, answer):
        """A prompt and an answer as training joins them: prompt + answer + end-of-conversation text."""
        return prompt + answer + self.settings.end_of_conversation_token

    def conversation_text(self, prompt, answer, field="messages"):
        """A conversation as training renders it: `prompt` (a text or messages; may be empty) then `answer`
        (messages), checked by training's rules (RowError names what is wrong: not a message list, an unknown
        role, empty content, no final assistant answer)."""
        head = prompt_messages(prompt) if prompt else []
        return self.renderer(conversation(head, answer, field))

    def encode(self, texts):
        """Token ids of each text as training tokenises a row."""
        return encode_texts(self.tokenizer, texts, self.max_seq_len)


def assistant_turn(answer):
    """An answer given as text -> the one-message list a conversation holds (messages are left as they are)."""
    return [{"role": "assistant", "content": answer}] if isinstance(answer, str) else answer


def encode_texts(tokenizer, texts, max_seq_len):
    """Token ids of each text as training tokenises a row: the tokenizer's special tokens, cut at max_seq_len."""
    return tokenizer(list(texts), truncation=True, max_length=max_seq_len)["input_ids"]


def encode_marking_cuts(tokenizer, texts, max_seq_len):
    """`encode_texts`' ids, and for each text whether it was cut. One tokenizer call over all texts; the
    few that are too long are encoded again with the truncation rule (which keeps trailing special tokens)."""
    ids = tokenizer(list(texts), verbose=False)["input_ids"]
    cut = [len(row) > max_seq_len for row in ids]
    long = [i for i, c in enumerate(cut) if c]
    for i, row in zip(long, encode_texts(tokenizer, [texts[i] for i in long], max_seq_len) if long else []):
        ids[i] = row
    return ids, cut
