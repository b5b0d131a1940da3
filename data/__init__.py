"""Preference data for reward-model training: sources, DeepSpeed-Chat's split, tokenise + cache, collator.

    from data import build_pair_datasets, PairCollator
    train_ds, eval_ds = build_pair_datasets(["Dahoas/rm-static"], "2,4,4", 1234, tokenizer, 512, "/tmp/data_files")
    loader = DataLoader(train_ds, batch_size=8, collate_fn=PairCollator(tokenizer.pad_token_id))
"""
from data.collator import PairCollator
from data.pairs import CACHE_VERSION, build_pair_datasets
from data.sources import REGISTRY, Adapter
from data.split import split_indices

__all__ = ["build_pair_datasets", "PairCollator", "REGISTRY", "Adapter", "split_indices", "CACHE_VERSION"]
