"""DeepSpeed-Chat's behaviour, written the way it writes it, for benchmarks and tests: its step-2 data path and loss.

Mirrors dschat/utils/data/data_utils.py (create_dataset_split for train_phase 2, PromptDataset,
DataCollatorReward, create_prompt_dataset's torch.save + torch.load) and the per-pair loss loop of
dschat/utils/model/reward_model.py (`reference_pairwise_loss`: the benchmark's baseline, and the reference
tests/test_reward_model.py and tests/test_fidelity.py hold model/reward_model.py to).
"""
import os

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from data.split import split_indices
from model.reward_model import END_OF_CONVERSATION


def reference_pairwise_loss(input_ids, rewards, pad_id, num_padding_at_beginning, compute_fp32_loss=False):
    """DeepSpeed-Chat's `RewardModel.forward` loss, pair by pair: (loss, chosen end scores, rejected end scores)."""
    bs = input_ids.shape[0] // 2
    seq_len = input_ids.shape[1]
    chosen_ids, rejected_ids = input_ids[:bs], input_ids[bs:]
    chosen_rewards, rejected_rewards = rewards[:bs], rewards[bs:]
    loss = 0.0
    chosen_scores, rejected_scores = [], []
    n = num_padding_at_beginning
    for i in range(bs):
        c_inds = (chosen_ids[i] == pad_id).nonzero()
        c_ind = c_inds[n].item() if len(c_inds) > n else seq_len
        check_divergence = (chosen_ids[i] != rejected_ids[i]).nonzero()
        if len(check_divergence) == 0:
            end_ind = rejected_rewards[i].size(-1)
            divergence_ind = end_ind - 1
            r_ind = c_ind
        else:
            r_inds = (rejected_ids[i] == pad_id).nonzero()
            r_ind = r_inds[n].item() if len(r_inds) > n else seq_len
            end_ind = max(c_ind, r_ind)
            divergence_ind = check_divergence[0]
        assert divergence_ind > 0
        c_truncated = chosen_rewards[i][divergence_ind:end_ind]
        r_truncated = rejected_rewards[i][divergence_ind:end_ind]
        chosen_scores.append(chosen_rewards[i][c_ind - 1])
        rejected_scores.append(rejected_rewards[i][r_ind - 1])
        if compute_fp32_loss:
            c_truncated, r_truncated = c_truncated.float(), r_truncated.float()
        loss += -F.logsigmoid(c_truncated - r_truncated).mean()
    return loss / bs, torch.stack(chosen_scores), torch.stack(rejected_scores)


class PromptDataset(Dataset):
    """Phase 2: per pair, the (1, max_seq_len) chosen/rejected ids and masks."""

    def __init__(self, chosen_dataset, reject_dataset):
        self.chosen_dataset, self.reject_dataset = chosen_dataset, reject_dataset

    def __len__(self):
        return len(self.chosen_dataset)

    def __getitem__(self, idx):
        return (self.chosen_dataset[idx]["input_ids"], self.chosen_dataset[idx]["attention_mask"],
                self.reject_dataset[idx]["input_ids"], self.reject_dataset[idx]["attention_mask"])


class DataCollatorReward:
    """Concatenate the already padded rows: all chosen, then all rejected, (2B, max_seq_len)."""

    def __call__(self, data):
        return {"input_ids": torch.cat([f[0] for f in data] + [f[2] for f in data], dim=0),
                "attention_mask": torch.cat([f[1] for f in data] + [f[3] for f in data], dim=0)}


def create_dataset_split(current_dataset, tokenizer, end_of_conversation_token, max_seq_len):
    """One sample at a time: tokenise prompt+answer padded to max_seq_len, keep the tensors."""
    chosen_dataset, reject_dataset = [], []
    for tmp_data in current_dataset:
        chosen_sentence = tmp_data["prompt"] + tmp_data["chosen"]
        reject_sentence = tmp_data["prompt"] + tmp_data["rejected"]
        if chosen_sentence is not None and reject_sentence is not None:
            chosen_sentence += end_of_conversation_token
            reject_sentence += end_of_conversation_token
            chosen_token = tokenizer(chosen_sentence, max_length=max_seq_len, padding="max_length",
                                     truncation=True, return_tensors="pt")
            reject_token = tokenizer(reject_sentence, max_length=max_seq_len, padding="max_length",
                                     truncation=True, return_tensors="pt")
            chosen_dataset.append(chosen_token)
            reject_dataset.append(reject_token)
    return PromptDataset(chosen_dataset, reject_dataset)


def create_prompt_dataset(data_folder, tokenizer, max_seq_len, output_path, seed, data_split="0,1",
                          end_of_conversation_token=END_OF_CONVERSATION):
    """Read train/test JSONL, split, tokenise per sample, torch.save, then torch.load (as DeepSpeed-Chat).

    Returns ((train, eval) PromptDatasets as loaded back, the train cache file). As in DeepSpeed-Chat,
    the built datasets are still referenced while the saved copies load.
    """
    import datasets
    shares = [float(s) for s in data_split.split(",")]
    raw = datasets.load_dataset("json", cache_dir=os.path.join(output_path, "hf_cache"),
                                data_files={"train": os.path.join(data_folder, "train.jsonl"),
                                            "test": os.path.join(data_folder, "test.jsonl")})
    built = []
    for split in ("train", "test"):
        index = split_indices(len(raw[split]), shares, 1, seed)
        built.append(create_dataset_split(Subset(raw[split], index), tokenizer, end_of_conversation_token,
                                          max_seq_len))
    files = [os.path.join(output_path, f"{split}dataset.pt") for split in ("train", "eval")]
    for dataset, file in zip(built, files):
        torch.save(dataset, file)
    loaded = tuple(torch.load(file, weights_only=False) for file in files)
    return loaded, files[0]


def loss(model, batch):
    """RewardModel backbone + v_head, then DeepSpeed-Chat's per-pair Python loop for the loss."""
    rewards = model._values(batch["input_ids"], batch["attention_mask"])
    return reference_pairwise_loss(batch["input_ids"], rewards, model.PAD_ID, model.num_padding_at_beginning)[0]
