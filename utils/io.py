"""Small file helpers shared by the entry points: JSON written the same way everywhere."""
import json

import torch


def write_json(path, content):
    with open(path, "w") as f:
        json.dump(content, f, indent=2, default=_jsonable)
        f.write("\n")


def _jsonable(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return str(value)
