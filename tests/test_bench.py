"""The benchmark's baseline and project paths do the same work: same pairs, same ids, same loss.

Its timing is not tested (benchmarks/bench.py prints ratios measured side by side).
Run: .venv/bin/python -m pytest tests/test_bench.py -q
"""
import torch

from benchmarks import deepspeed_chat
from tests.fixtures import reward_model
from data import PairCollator, build_pair_datasets

EOT = "<|endoftext|>"


def test_baseline_and_project_batches_give_the_same_loss(tiny_opt, opt_tokenizer, pair_folder, tmp_path):
    max_len = 96
    project, _ = build_pair_datasets([pair_folder], "0,1", 1234, opt_tokenizer, max_len, str(tmp_path / "p"), EOT)
    (baseline, _), _ = deepspeed_chat.create_prompt_dataset(pair_folder, opt_tokenizer, max_len,
                                                            str(tmp_path / "b"), 1234, "0,1", EOT)
    assert len(project) == len(baseline)  # the same split, nothing dropped
    rows = [0, 5, 17, 42]
    ours = PairCollator(opt_tokenizer.pad_token_id)([project[i] for i in rows])
    theirs = deepspeed_chat.DataCollatorReward()([baseline[i] for i in rows])
    length = ours["input_ids"].size(1)
    assert theirs["input_ids"].size(1) == max_len > length  # padded to max_seq_len vs to the longest row
    assert torch.equal(theirs["input_ids"][:, :length], ours["input_ids"])
    assert torch.equal(theirs["attention_mask"][:, :length], ours["attention_mask"])
    assert theirs["attention_mask"][:, length:].sum() == 0
    model = reward_model(tiny_opt, opt_tokenizer, num_padding_at_beginning=1).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**ours)["loss"], deepspeed_chat.loss(model, theirs), atol=1e-5, rtol=0)
