"""Conversations as preference data: check message lists, render them with a chat template, and turn
rated completions into pairs.

Every check raises `RowError` with what is wrong and the fix; the caller adds the file and row.
"""
import itertools
import math

from utils.errors import UserError

ROLES = ("system", "user", "assistant")
PROBE = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]


class RowError(ValueError):
    """One row of a source cannot be used; the message says why and how to fix it."""


# ---------------------------------------------------------------- messages

def as_messages(value, field):
    """`value` as a list of {"role", "content"} dicts: known roles, non-empty text content."""
    if not isinstance(value, list) or not value:
        raise RowError(f"field {field!r} must be a non-empty list of {{\"role\", \"content\"}} messages, got "
                       f"{_short(value)}. Fix or remove the row.")
    messages = []
    for i, message in enumerate(value):
        where = f"{field}[{i}]"
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            raise RowError(f"{where} must be an object with text fields 'role' and 'content', got "
                           f"{_short(message)}. Fix or remove the row.")
        if message["role"] not in ROLES:
            raise RowError(f"{where} has the unknown role {message['role']!r}; use one of {', '.join(ROLES)} "
                           "(rename it, e.g. 'human' -> 'user', 'gpt' -> 'assistant').")
        if not message["content"].strip():
            raise RowError(f"{where} ({message['role']}) has empty content; drop that message or the row.")
        messages.append({"role": message["role"], "content": message["content"]})
    return messages


def prompt_messages(value, field="prompt"):
    """An explicit prompt: a message list, or a text that becomes one user message."""
    return as_messages([{"role": "user", "content": value}] if isinstance(value, str) else value, field)


def _prompt_part(messages):
    """Everything up to and including the last message that is not the assistant's."""
    last = max((i for i, m in enumerate(messages) if m["role"] != "assistant"), default=-1)
    return messages[:last + 1]


def conversation(prompt, answer, field):
    """prompt messages + `answer` (a list that may repeat the prompt first, as stored whole): it must end
    with an assistant turn."""
    messages = as_messages(answer, field)
    if prompt and messages[:len(prompt)] == prompt:
        messages = messages[len(prompt):]
    full = prompt + messages
    if full[-1]["role"] != "assistant":
        raise RowError(f"field {field!r}: the conversation ends with a {full[-1]['role']} turn; a scored "
                       "conversation ends with the assistant's answer. Add the answer or remove the row.")
    return full


def conversation_pair(prompt, chosen, rejected):
    """(chosen conversation, rejected conversation) from an explicit prompt (None: implicit, the
    messages before each side's final assistant turns). Both sides must share one prompt."""
    head = [] if prompt is None else prompt_messages(prompt)
    chosen, rejected = conversation(head, chosen, "chosen"), conversation(head, rejected, "rejected")
    a, b = _prompt_part(chosen), _prompt_part(rejected)
    if a != b:
        at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        raise RowError(f"chosen and rejected have different prompts (they differ at message {at + 1}); a pair "
                       "compares two answers to one conversation. Give both the same messages before the "
                       "final assistant answer.")
    return chosen, rejected


# ---------------------------------------------------------------- rendering

class ChatRenderer:
    """Render message lists with the tokenizer's chat template, as text the tokenizer then encodes.

    A leading BOS the template writes is removed when the tokenizer adds its own, so the ids hold one BOS.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.template = getattr(tokenizer, "chat_template", None)
        ids = tokenizer("a")["input_ids"]
        adds_bos = tokenizer.bos_token_id is not None and ids[:1] == [tokenizer.bos_token_id]
        self.bos = tokenizer.bos_token if adds_bos else None

    def __call__(self, messages):
        if not self.template:
            raise RowError("the tokenizer has no chat template to render conversations with: a reward model reads "
                           "them through the template it was trained with; train with one (main.py --chat_template "
                           "FILE, a Jinja template over `messages`, saved with the model).")
        try:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False)
        except Exception as error:  # Jinja, and templates calling raise_exception, raise any type
            raise RowError(f"the chat template cannot render it ({type(error).__name__}: {error}). Fix the "
                           "row, or use a template that accepts it (main.py --chat_template FILE).") from error
        if self.bos and text.startswith(self.bos):
            text = text[len(self.bos):]
        return text


def set_chat_template(tokenizer, path):
    """Use the Jinja template in `path` (--chat_template) instead of the tokenizer's; it is saved with the
    model, so evaluation and serving render conversations the same way."""
    try:
        with open(path) as f:
            template = f.read()
    except OSError as error:
        raise UserError(f"--chat_template {path!r}: cannot read it ({error}).") from error
    tokenizer.chat_template = template
    try:
        ChatRenderer(tokenizer)(PROBE)
    except RowError as error:
        raise UserError(f"--chat_template {path!r} fails on a one-turn conversation: {error}") from error


# ---------------------------------------------------------------- ratings

def number(value, where):
    """A rating as a finite float; RowError for text, null, booleans, NaN."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RowError(f"{where} is {_short(value)}, not a number; give every completion a numeric rating "
                       "(e.g. 4.5), or remove the completion.")
    return float(value)


def _best_vs_rest(scores):
    """The best completion (the first of equal best ones) against each other one; none for fewer than two."""
    best = max(range(len(scores)), key=scores.__getitem__, default=0)
    return [(best, j) for j in range(len(scores)) if j != best]


PAIR_RULES = {  # --pairs_from_ratings: which completions of one prompt are compared
    "best_vs_rest": _best_vs_rest,
    "all": lambda scores: list(itertools.combinations(range(len(scores)), 2)),
}


def rated_pairs(scores, rule):
    """([(chosen index, rejected index, score difference)], ties dropped) for one prompt's scores."""
    pairs, ties = [], 0
    for i, j in PAIR_RULES[rule](scores):
        if scores[i] == scores[j]:
            ties += 1
            continue
        high, low = (i, j) if scores[i] > scores[j] else (j, i)
        pairs.append((high, low, scores[high] - scores[low]))
    return pairs, ties


def _short(value, limit=60):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
