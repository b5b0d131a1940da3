"""Which end-token rule a build of the tokenised pairs uses, and why (the log says both).

DeepSpeed-Chat reads a row's score before its (n+1)-th PAD token, with PAD = EOS: exact for its data
and OPT. Where EOS also occurs inside a text (a chat template ends every turn with it) that reads an
earlier turn's end, so `auto` then picks the `last_token` rule: the last attended token of each row.
"""
from utils.spans import DEEPSPEED_CHAT, LAST_TOKEN

AUTO = "auto"
RULES = {DEEPSPEED_CHAT: "the score is read before the (n+1)-th PAD token, PAD = EOS (DeepSpeed-Chat's rule)",
         LAST_TOKEN: "the score is read at the last attended token of each row (attention mask)"}
DROP_COLUMNS = {DEEPSPEED_CHAT: "drop", LAST_TOKEN: "drop_last"}  # each rule's drop codes in the tokenised pairs


def pad_inside(ids, pad_id, lead):
    """True when a PAD-equal token sits inside the text `ids`: after the `lead` ones every text starts with
    (OPT's BOS) and before the trailing ones (GPT-2's end-of-conversation token is its EOS). DeepSpeed-Chat's
    rule would read the score there, before the text ends."""
    end = len(ids)
    while end > lead and ids[end - 1] == pad_id:
        end -= 1
    return pad_id in ids[lead:end]


def choose(asked, chat, inside, total, pad_token):
    """(rule, why): the rule asked for, or for `auto` the last_token rule wherever PAD = EOS is ambiguous.
    `chat`: a chat template rendered the texts; `inside` of `total` pairs hold PAD inside a text."""
    if asked != AUTO:
        return asked, f"it was asked for (main.py --end_token_rule {asked}, or the rule saved with the model)"
    pad = f"PAD = EOS {pad_token!r}"
    if chat:
        return LAST_TOKEN, (f"a chat template renders the conversations, and with {pad} DeepSpeed-Chat's rule would "
                            "read the end of the first turn that ends with EOS, not the last answer")
    if inside:
        return LAST_TOKEN, (f"{pad} occurs inside the texts of {inside:,} of {total:,} pairs, where DeepSpeed-Chat's "
                            "rule would read the score before the text ends (main.py --end_token_rule deepspeed_chat "
                            "keeps it)")
    return DEEPSPEED_CHAT, (f"{pad} occurs only where DeepSpeed-Chat's rule expects it (DeepSpeed-Chat's data "
                            "and models)")
