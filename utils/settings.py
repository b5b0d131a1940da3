"""The resolved settings of a reward model: one frozen object, made once by main.py's setup from the flags,
the DeepSpeed config, the tokenizer and the data's decisions, then saved with every checkpoint and model.

Everything that builds a model, a tokenizer or a loss reads it (model/create.py), so training, resume,
export, evaluation, scoring and serving read every text the same way. Nothing mutates it: a changed
decision is a new object (`dataclasses.replace`).
"""
import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from utils.spans import DEEPSPEED_CHAT, END_OF_CONVERSATION


@dataclass(frozen=True)
class LossOptions:
    """The pairwise objective's options (model/reward_model.py `pairwise_loss`); all off is DeepSpeed-Chat's
    loss. A new loss term adds its option here, one flag in main.py and one function beside the loss."""
    compute_fp32_loss: bool = False  # upcast the rewards of the loss span to fp32
    use_margin: bool = False  # -logsigmoid(r_c - r_j - margin) with each pair's `margin` field
    center_rewards_coefficient: float = 0.0  # + c * mean((s_c + s_j)^2) over the end scores


PAIRWISE, REGRESSION = "pairwise", "regression"  # HeadOptions.objective


@dataclass(frozen=True)
class HeadOptions:
    """The value head's outputs and how they become one reward (model/reward_model.py `combine`); the defaults
    are DeepSpeed-Chat's single bias-free output. Pairwise with num_heads K > 1: an ensemble of K heads on the
    shared backbone, reward = their mean, uncertainty = their std. Regression: one output per rated attribute,
    reward = attribute_weights . outputs."""
    num_heads: int = 1  # pairwise value heads (an ensemble when > 1)
    bootstrap: bool = False  # each head weighs each pair by its own Poisson(1) draw (needs num_heads > 1)
    conservative_lambda: float = 0.0  # scoring also reports mean - lambda * std of the heads
    objective: str = PAIRWISE  # "pairwise" (ranking loss) or "regression" (per-attribute ratings)
    attributes: tuple = ()  # regression: the rated attributes, one head output each
    attribute_weights: tuple = ()  # regression: reward = weights . outputs
    seed: int = 0  # heads k > 0 of an ensemble: init and bootstrap draws seeded from (seed, k) (main.py: --seed)

    @property
    def outputs(self):
        """Number of value-head outputs: one per attribute under regression, else num_heads."""
        return len(self.attributes) if self.objective == REGRESSION else self.num_heads

    @classmethod
    def from_dict(cls, values):
        """HeadOptions from `asdict` output (JSON turns tuples into lists); unknown keys are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {key: tuple(value) if isinstance(value, list) else value for key, value in values.items()
                  if key in known}
        return cls(**values)


@dataclass(frozen=True)
class Settings:
    """What a reward model is and how a text becomes its tokens and score."""
    model_name_or_path: str  # the base causal LM the run started from
    max_seq_len: int = 512  # tokens per text (truncated)
    num_padding_at_beginning: int = 1  # PAD-equal tokens before every text (OPT's BOS `</s>` = PAD)
    end_token_rule: str = DEEPSPEED_CHAT  # where a row's score is read (utils/spans.py)
    end_token_reason: str = ""  # why that rule (the data decided it, or the flag)
    pad_token: Optional[str] = None  # None: PAD = EOS (DeepSpeed-Chat); else a token distinct from EOS
    pad_token_id: Optional[int] = None
    end_of_conversation_token: str = END_OF_CONVERSATION  # appended to each text; "" under a chat template
    add_eot_token: bool = False  # the end-of-conversation text is one special token
    chat_template: Optional[str] = None  # the Jinja template from --chat_template (None: the tokenizer's own)
    dtype: str = "fp32"  # training precision: fp32, bf16 or fp16
    dropout: Optional[float] = None  # None: the base model's own dropout probabilities
    loss: LossOptions = field(default_factory=LossOptions)
    head: HeadOptions = field(default_factory=HeadOptions)
    lora_dim: int = 0
    lora_module_name: str = "decoder.layers."
    only_optimize_lora: bool = False

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values):
        """Settings from `to_dict`'s output; keys this version does not know are ignored and missing ones
        (a model saved before they existed) take their defaults."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {key: value for key, value in values.items() if key in known}
        if isinstance(values.get("loss"), dict):
            loss_keys = {f.name for f in dataclasses.fields(LossOptions)}
            values["loss"] = LossOptions(**{k: v for k, v in values["loss"].items() if k in loss_keys})
        if isinstance(values.get("head"), dict):
            values["head"] = HeadOptions.from_dict(values["head"])
        values.setdefault("model_name_or_path", "")
        return cls(**values)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)
