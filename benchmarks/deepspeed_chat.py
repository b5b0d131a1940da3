"""The DeepSpeed-Chat step-2 data path and loss, as its code does them, for the benchmark's baseline.

Mirrors dschat/utils/data/data_utils.py (create_dataset_split for train_phase 2, PromptDataset,
DataCollatorReward, create_prompt_dataset's torch.save + torch.load) and the per-pair loss loop of
dschat/utils/model/reward_model.py (kept once, in tests/reference.py).
"""
import os

import torch
from torch.utils.data import Dataset, Subset

from data.split import split_indices
from model.reward_model import END_OF_CONVERSATION
from tests.reference import reference_pairwise_loss


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
