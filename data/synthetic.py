"""`synthetic/preference[:N]`: an offline demo set of N preference pairs, the same on every run;
`synthetic/conversations[:N]`: the same rule in conversations of 2-4 user turns (message lists);
`synthetic/rated[:N]`: N rated single responses (main.py --objective regression), see `make_rated`.

Both answers share the prompt and a pool of neutral advice sentences; the chosen answer opens
and closes politely, the rejected one rudely (the opening keeps the signal under truncation).
Tone sentences have similar lengths and the filler count is drawn per answer, so the chosen
answer is the longer one only about half the time: the rule to learn is tone, not length.
Only common English words, so a tiny byte-level BPE tokenizer handles them.
"""
import random

NAME = "synthetic/preference"
CHAT_NAME = "synthetic/conversations"
DEFAULT_PAIRS = 4000
SEED = 0  # fixed: the data never depends on --seed (that one only picks the split)

TASKS = ["plan a trip to the beach", "cook rice for dinner", "write a short letter to my friend",
         "fix a flat tire on my bike", "learn to play the guitar", "find a good book to read",
         "clean my kitchen", "train my dog to sit", "save money each month",
         "grow tomatoes in my garden", "get ready for a job interview", "study for a math test",
         "paint my bedroom", "start running in the morning", "bake a birthday cake",
         "make new friends in a new city"]
ASKS = ["Can you help me {}?", "How do I {}?", "What is the best way to {}?",
        "Please tell me how to {}.", "I want to {}. Any advice?"]
FILLER = ["First, make a simple plan.", "Then take it one step at a time.", "Start early in the day.",
          "Write down what you need.", "Ask someone who has done it before.",
          "Keep it short and simple.", "Check your progress every week.",
          "Use what you already have at home."]
POLITE_OPEN = ["Sure, I would be happy to help.", "Of course, that is a great question.",
               "Thank you for asking, I am glad to help.", "Absolutely, here is a friendly tip.",
               "Great idea, let us work on it together."]
POLITE_CLOSE = ["I hope this helps, good luck!", "Please let me know if you need more help.",
                "You are doing great, keep going!", "Have a wonderful day, and thank you!",
                "Feel free to ask me again anytime."]
RUDE_OPEN = ["No, go and figure it out yourself.", "Ugh, that is a really stupid question.",
             "I do not care about that at all.", "Why would you even ask me that?",
             "Whatever, this is boring and pointless."]
RUDE_CLOSE = ["Stop wasting my time with this.", "Go away and just leave me alone.",
              "Do not ever ask me again, okay?", "That is all you get, so deal with it.",
              "I really could not care any less."]


def _answer(rng, opens, closes):
    sentences = [rng.choice(opens)] + rng.sample(FILLER, rng.randint(0, 3)) + [rng.choice(closes)]
    return " " + " ".join(sentences)


def make_pair(rng):
    """{'prompt': ' Human: ... Assistant:', 'chosen': ' polite answer', 'rejected': ' rude answer'}."""
    request = rng.choice(ASKS).format(rng.choice(TASKS))
    return {"prompt": f" Human: {request} Assistant:",
            "chosen": _answer(rng, POLITE_OPEN, POLITE_CLOSE),
            "rejected": _answer(rng, RUDE_OPEN, RUDE_CLOSE)}


FOLLOW_UPS = ["Thanks. What should I do next?", "Okay. Is there anything else I should know?",
              "Got it. How long will it take?", "Nice. What if it goes wrong?"]


def make_conversation(rng):
    """{'chosen': [...], 'rejected': [...]} message lists (implicit prompt) of 2-4 user turns: earlier
    assistant turns are shared and neutral, only the last answer is polite (chosen) or rude (rejected)."""
    messages = [{"role": "user", "content": rng.choice(ASKS).format(rng.choice(TASKS))}]
    for _ in range(rng.randint(1, 3)):
        messages += [{"role": "assistant", "content": " ".join(rng.sample(FILLER, 2))},
                     {"role": "user", "content": rng.choice(FOLLOW_UPS)}]
    return {side: messages + [{"role": "assistant", "content": _answer(rng, opens, closes).strip()}]
            for side, opens, closes in (("chosen", POLITE_OPEN, POLITE_CLOSE), ("rejected", RUDE_OPEN, RUDE_CLOSE))}


SETS = {NAME: make_pair, CHAT_NAME: make_conversation}  # name -> one row from a random.Random


def make_splits(count, name=NAME):
    """(train rows, test rows): `count` rows of set `name` from a fixed seed, the last tenth (at least 1) for test."""
    rng = random.Random(SEED)
    pairs = [SETS[name](rng) for _ in range(count)]
    test_size = max(1, count // 10)
    return pairs[:-test_size], pairs[-test_size:]


# ---------------------------------------------------------------- rated single responses (--objective regression)

RATED_NAME = "synthetic/rated"
RATED_ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")  # HelpSteer2's names
MARKERS = {"helpfulness": "helpful", "correctness": "excellent", "coherence": "friendly", "complexity": "capital",
           "verbosity": "wonderful"}  # attribute -> the word whose count (0-4) in its slot is its rating
SLOT = 4  # words per attribute: its marker `rating` times, then "the"
DEFAULT_RATED_ROWS = 2000
MISSING_LABEL = 0.05  # share of ratings left null, as a rater who skipped an attribute


def make_rated(rng, prompt):
    """{'prompt', 'response', attribute: rating or None, ...}. The response holds one slot of `SLOT` words per
    attribute, in `RATED_ATTRIBUTES` order; a rating (0-4, drawn uniformly) is how often the attribute's marker
    word (`MARKERS`) fills its slot, the rest of the slot is "the". A tiny model learns it in seconds."""
    ratings = {name: rng.randint(0, SLOT) for name in RATED_ATTRIBUTES}
    words = [word for name, count in ratings.items() for word in [MARKERS[name]] * count + ["the"] * (SLOT - count)]
    row = {"prompt": prompt, "response": " " + " ".join(words) + "."}
    row.update({name: None if rng.random() < MISSING_LABEL else value for name, value in ratings.items()})
    return row


def make_rated_splits(count=DEFAULT_RATED_ROWS):
    """(train rows, test rows) of `count` rated responses from a fixed seed, two per prompt (as HelpSteer2
    rates two responses per prompt); the last tenth (at least two rows) for test."""
    rng = random.Random(SEED)
    rows = []
    for prompt_index in range((count + 1) // 2):
        prompt = f" Human: Rate item {prompt_index:04d}. Assistant:"
        rows += [make_rated(rng, prompt) for _ in range(2)]
    rows = rows[:count]
    test_size = max(2, count // 10 // 2 * 2)
    return rows[:-test_size], rows[-test_size:]
