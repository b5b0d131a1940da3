"""Config resolution: the file is the base, typed flags override. Run: python -m pytest tests/test_ds_config.py -q"""
import json

import pytest

from main import HERE, parse_args
from utils.ds_config import load_ds_config, resolve_ds_config
from utils.errors import UserError


def resolve(argv, world_size=1, device="cpu", bf16=True, base=None):
    args, typed = parse_args(["--output_dir", "x"] + argv)
    base = base or load_ds_config(f"{HERE}/ds_config.json")
    return resolve_ds_config(base, args, typed, world_size, device, bf16)


def test_card_config_is_the_base():
    config = load_ds_config(f"{HERE}/ds_config.json")
    assert config["train_batch_size"] == 64 and config["train_micro_batch_size_per_gpu"] == 8
    assert config["zero_optimization"]["stage"] == 0 and config["fp16"]["enabled"]
    assert config["gradient_clipping"] == 1.0 and config["prescale_gradients"] is True


@pytest.mark.parametrize("world_size,micro,accumulation", [(1, 8, 8), (2, 8, 4), (8, 8, 1), (4, 2, 8)])
def test_global_batch_stays_64(world_size, micro, accumulation):
    config, _ = resolve(["--per_device_train_batch_size", str(micro)], world_size=world_size)
    assert config["train_batch_size"] == 64
    assert config["gradient_accumulation_steps"] == accumulation


def test_indivisible_global_batch_is_a_clear_error():
    with pytest.raises(UserError, match="train_batch_size=64 is not divisible"):
        resolve([], world_size=3)


def test_typed_accumulation_sets_global_batch_and_says_so():
    config, notes = resolve(["--gradient_accumulation_steps", "2", "--per_device_train_batch_size", "4"])
    assert config["train_batch_size"] == 8 and any("train_batch_size 64 -> 8" in n for n in notes)


def test_untyped_flags_leave_the_file_alone():
    config, notes = resolve([], device="cuda")
    assert config["fp16"]["enabled"] and config["prescale_gradients"] and notes == []


def test_fp16_becomes_bf16_on_cpu_with_one_note():
    config, notes = resolve([])
    assert config["bf16"]["enabled"] and not config["fp16"]["enabled"]
    assert notes == ["fp16 -> bf16: DeepSpeed's CPU accelerator has no fp16."]
    config, _ = resolve([], bf16=False)
    assert not config["bf16"]["enabled"] and not config["fp16"]["enabled"]


@pytest.mark.parametrize("stage", [2, 3])
def test_prescale_with_zero_2_3_is_resolved(stage):
    config, notes = resolve(["--zero_stage", str(stage)], device="cuda")
    assert config["zero_optimization"]["stage"] == stage and config["prescale_gradients"] is False
    assert any("prescale_gradients" in n for n in notes)


def test_offload_flag(tmp_path):
    config, _ = resolve(["--zero_stage", "3", "--offload"])
    assert config["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert config["zero_optimization"]["offload_param"]["device"] == "cpu"


def test_config_that_is_not_json_names_the_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "train_batch_size": 64,\n  oops\n}\n')
    with pytest.raises(UserError, match="line 3"):
        load_ds_config(str(path))


def test_dtype_flag_overrides(tmp_path):
    config, _ = resolve(["--dtype", "fp32"], device="cuda")
    assert not config["fp16"]["enabled"] and not config["bf16"]["enabled"]
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"train_batch_size": 8, "train_micro_batch_size_per_gpu": 8,
                                "bf16": {"enabled": "yes"}}))
    with pytest.raises(UserError, match="bf16.enabled"):
        resolve([], base=load_ds_config(str(path)))
