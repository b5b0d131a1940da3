"""Every setup the card promises, trained through main.py on a tiny model (CPU, gloo), and its config files.

The card's defaults (bf16 on CPU), ZeRO 0-3, ZeRO-Offload (CPU) for stages 2 and 3, ZeRO-Infinity (NVMe), LoRA
and gradient checkpointing, one process and two ranks, and a GPT-2 base: each run must finish, log finite
losses that fall on the learnable task (OUT/train_log.jsonl), and save a model that
evaluation_scripts/evaluate.py reloads with the scores main.py reported at the end of training. Same seed
and data must give the same training under ZeRO 0, 1, 2 and 3, and on 2 ranks. Each setup trains once; the
tests share its run.

Run: python -m pytest tests/test_zero_matrix.py -q     (-m "not slow" skips 2-rank, offload and NVMe runs)
"""
import dataclasses
import glob
import json
import math
import os
import shutil
import sys

import pytest
import torch

from main import HERE, parse_args
from tests.fixtures import eval_accuracies, learnable_pairs, reloaded_metrics, run_main, step_losses, write_jsonl
from utils.dist import free_port
from utils.ds_config import load_ds_config, resolve_ds_config

CONFIGS = os.path.join(HERE, "training_scripts", "configs")
TRAIN_PAIRS, EVAL_PAIRS, MICRO = 128, 64, 8
STEPS = TRAIN_PAIRS // MICRO
FAST = ["--max_seq_len", "64", "--per_device_train_batch_size", str(MICRO), "--gradient_accumulation_steps", "1",
        "--per_device_eval_batch_size", "32", "--learning_rate", "2e-3", "--lr_scheduler_type", "constant",
        "--data_split", "0,10,0", "--num_padding_at_beginning", "1"]
FP32 = ["--dtype", "fp32", "--dropout", "0"]  # exact comparisons: no bf16 rounding, no dropout masks
LORA = ["--lora_dim", "8", "--lora_learning_rate", "5e-2"]
# |reloaded - reported| score tolerance, as a fraction of the reward spread. fp32: exact up to summation
# order. bf16: ZeRO-3 computes linear layers with its own kernel, and a LoRA merge rounds W + BA to bf16.
SCORE_TOLERANCE = {"fp32": 1e-4, "bf16": 3e-2}


def config(name):
    return os.path.join(CONFIGS, f"{name}.json")


def nvme_config(folder):
    """zero3_infinity_nvme.json swapping to `folder`/nvme; returns the flags that use it."""
    nvme = folder / "nvme"
    nvme.mkdir()
    ds_config = load_ds_config(config("zero3_infinity_nvme"))
    for key in ("offload_optimizer", "offload_param"):
        ds_config["zero_optimization"][key]["nvme_path"] = str(nvme)
    (folder / "ds_config.json").write_text(json.dumps(ds_config))
    return ["--deepspeed_config", folder / "ds_config.json"]


@dataclasses.dataclass
class Setup:
    flags: list
    logged: tuple = ()  # what main.py prints when it uses the setup (the merged config, the ranks)
    ranks: int = 1
    base: str = "tiny_opt"  # the fixture of the base model
    needs: tuple = ()  # (DeepSpeed op builder that must be compatible, why it is skipped without)
    extra: object = None  # folder -> more flags
    slow: bool = False


CPU_ADAM = ("CPUAdamBuilder", "ZeRO-Offload needs DeepSpeedCPUAdam, whose C++ op is not compatible with this system "
            "(ds_report)")
ASYNC_IO = ("AsyncIOBuilder", "ZeRO-Infinity's NVMe offload needs DeepSpeed's async_io op, which needs libaio "
            "(headers and libaio.so; apt-get install libaio-dev): `ds_report` shows async_io not compatible here")
# 2 ranks, ZeRO-0 with a sub-batch wherever it saves padding: the token-embedding rows each pass adds into
# .grad (training/embedding_grad.py) must reach DeepSpeed's all-reduce like autograd's gradients.
# ZeRO-2/3 on 2 ranks: DeepSpeed refuses prescale_gradients with reduce-scatter.
TWO_RANKS = {0: ["--sub_batches", "0"], 2: [], 3: []}
PRESCALE_NOTE = "config: prescale_gradients: true -> false"
SETUPS = {
    # the card's defaults: its ds_config.json's fp16 runs as bf16 on CPU, with dropout and TensorBoard
    "defaults": Setup([], ("config: fp16 -> bf16: DeepSpeed's CPU accelerator has no fp16.",),
                      extra=lambda folder: ["--enable_tensorboard", "--tensorboard_path", folder / "tb"]),
    # the config files as --deepspeed_config, fp32. ZeRO-3 also recomputes activations (gradient
    # checkpointing): in fp32 without dropout that changes no number, so its loss curve must still match
    **{f"zero{stage}": Setup(["--deepspeed_config", path] + FP32 + more, (f'"stage": {stage}',))
       for stage, path, more in [(0, os.path.join(HERE, "ds_config.json"), []), (1, config("zero1"), []),
                                 (2, config("zero2"), []), (3, config("zero3"), ["--gradient_checkpointing"])]},
    # LoRA on ZeRO-2, bf16. Adapter lr 2e-2, not 5e-2: at 5e-2 some dropout streams saturate the bf16 rewards
    # (59 of 64 eval pairs tied at ~2.5), so the test would measure luck, not learning
    "lora": Setup(["--deepspeed_config", config("zero2"), "--lora_dim", "8", "--lora_learning_rate", "2e-2"]),
    # adapters and the value head only: a frozen base learns slower, hence the higher head lr
    "lora+only_optimize_lora+checkpointing": Setup(
        ["--deepspeed_config", config("zero2")] + FP32 + LORA + ["--only_optimize_lora", "--gradient_checkpointing",
                                                                  "--learning_rate", "2e-2"]),
    # a GPT-2 base: no BOS, so no padding at the beginning
    "gpt2": Setup(["--num_padding_at_beginning", "0"], base="tiny_gpt2"),
    # DeepSpeedCPUAdam compiles a C++ op on first use (about 2 minutes on 2 cores)
    **{name: Setup(["--deepspeed_config", config(name)], ('"offload_optimizer": {"device": "cpu"',), needs=CPU_ADAM,
                   slow=True) for name in ("zero2_offload", "zero3_offload")},
    "zero3_infinity_nvme": Setup([], needs=ASYNC_IO, extra=nvme_config, slow=True),
    # 2 ranks take half of every global batch of 8 each: --zero_stage here, the config files above
    **{f"zero{stage} on 2 ranks": Setup(["--zero_stage", str(stage)] + more + FP32,
                                        ("world_size=2",) + ((PRESCALE_NOTE,) if stage > 1 else ()), ranks=2,
                                        slow=True) for stage, more in TWO_RANKS.items()},
    # under ZeRO-3 each rank holds a slice of every weight: the LoRA merge must gather them first
    "zero3+lora on 2 ranks": Setup(["--zero_stage", "3"] + FP32 + LORA + ["--only_optimize_lora",
                                                                          "--gradient_checkpointing",
                                                                          "--learning_rate", "2e-2"],
                                   ranks=2, slow=True),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread_per_process():
    """Tiny models on a few shared cores: extra intra-op threads only wait for each other (a ZeRO-0 step
    took 1 s with 2 threads on a busy 2-core machine, 20 ms with 1)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A small learnable set: 16 optimizer steps of 8 pairs, 64 eval pairs; one token cache for all runs."""
    folder = tmp_path_factory.mktemp("matrix_pairs")
    write_jsonl(folder / "train.jsonl", learnable_pairs(TRAIN_PAIRS, seed=1))
    write_jsonl(folder / "test.jsonl", learnable_pairs(EVAL_PAIRS, seed=2))
    return {"path": str(folder), "cache": str(tmp_path_factory.mktemp("matrix_cache"))}


def train(base, data, folder, setup):
    """One main.py run of `setup`; returns its log, output folder, dtype and final results."""
    if setup.needs:
        from deepspeed.ops import op_builder
        if not getattr(op_builder, setup.needs[0])().is_compatible(verbose=False):
            pytest.skip(setup.needs[1])
    launcher, port, flags = None, free_port(), FAST + setup.flags + (setup.extra(folder) if setup.extra else [])
    if setup.ranks > 1:
        deepspeed = shutil.which("deepspeed") or os.path.join(os.path.dirname(sys.executable), "deepspeed")
        launcher = [deepspeed, "--num_gpus", str(setup.ranks), "--master_port", port]
        flags += ["--per_device_train_batch_size", str(MICRO // setup.ranks)]  # same global batch
    out = folder / "out"
    result = run_main(["--model_name_or_path", base, "--data_path", data["path"], "--output_dir", out,
                       "--data_output_path", data["cache"]] + flags, launcher=launcher)
    assert result.returncode == 0, result.stdout[-3000:]
    bf16 = json.loads((out / "ds_config.json").read_text())["bf16"]["enabled"]
    return {"log": result.stdout, "out": out, "folder": folder, "dtype": "bf16" if bf16 else "fp32", "port": port,
            "results": json.loads((out / "train_results.json").read_text())}


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory, request):
    """runs(name) -> the run of SETUPS[name], trained on first use and shared by every test here."""
    done = {}

    def get(name):
        if name not in done:
            setup = SETUPS[name]
            folder = tmp_path_factory.mktemp(name.replace(" ", "_").replace("+", "_"))
            done[name] = train(request.getfixturevalue(setup.base), data, folder, setup)
        return done[name]
    return get


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow) if setup.slow else name
                                  for name, setup in SETUPS.items()])
def test_setup_learns_and_reloads(name, runs, data):
    run = runs(name)
    for line in SETUPS[name].logged:
        assert line in run["log"], line
    losses, results = step_losses(run["out"]), run["results"]
    assert len(losses) == STEPS and all(math.isfinite(x) for x in losses), losses
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.05, losses
    accuracies = eval_accuracies(run["out"])
    assert len(accuracies) == 2 and accuracies[-1] > accuracies[0] + 0.15, accuracies  # before and after
    assert results["optimizer_steps"] == STEPS and results["accuracy"] == accuracies[-1]
    reloaded = reloaded_metrics(run["out"], data["path"])
    tolerance = SCORE_TOLERANCE[run["dtype"]] * results["reward_std"]
    for key in ("chosen_mean", "rejected_mean"):
        assert reloaded[key] == pytest.approx(results[key], abs=tolerance), (key, reloaded, results)
    assert reloaded["accuracy"] == pytest.approx(results["accuracy"], abs=1.5 / EVAL_PAIRS)


def test_defaults_train_in_bf16_and_write_tensorboard(runs):
    run = runs("defaults")
    assert json.loads((run["out"] / "ds_config.json").read_text())["bf16"]["enabled"] is True
    assert any(name.startswith("events.out.tfevents") for _, _, files in os.walk(run["folder"] / "tb")
               for name in files)


def test_zero_0_1_2_3_give_the_same_loss_curve(runs):
    """Same seed and data: ZeRO only changes where optimizer states, gradients and weights live, not the
    maths (fp32). A curve that drifts apart means a wiring bug (a missed gradient, a wrong scale)."""
    reference = runs("zero0")
    for stage in (1, 2, 3):
        run = runs(f"zero{stage}")
        # the logged losses at full precision: measured 7e-9 (ZeRO-1, 2) and 3e-7 (ZeRO-3) from ZeRO-0's
        torch.testing.assert_close(torch.tensor(step_losses(run["out"])), torch.tensor(step_losses(reference["out"])),
                                   rtol=0, atol=1e-5, msg=f"ZeRO-{stage} vs ZeRO-0")
        # ZeRO-1/2 reduce and clip over flat fp32 buffers (another summation order) and ZeRO-3 runs linear
        # layers through its own autograd function: rounding differs slightly and 16 Adam steps carry it
        # into the final scores (ZeRO-1 vs 0 measured 3.2e-5 relative). The ZeRO-3 run also checkpoints,
        # so it computes every row in full where the others share prompts in one unpadded row (another
        # summation order in every weight gradient: 2.2e-3 relative measured)
        for key in ("chosen_mean", "rejected_mean"):
            assert run["results"][key] == pytest.approx(reference["results"][key], rel=5e-3 if stage == 3 else 1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("stage", TWO_RANKS)
def test_two_ranks_train_like_one_process(stage, runs):
    """Each rank takes half of every global batch of 8 (DistributedSampler): the averaged gradient, hence
    the trained model, equals the one-process run's (fp32, no dropout)."""
    run, single = runs(f"zero{stage} on 2 ranks"), runs(f"zero{stage}")
    # DeepSpeed's CPU all-reduce files (66 MB of RAM each) are gone with the run (utils/dist.init_distributed)
    assert not glob.glob(f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_*_{run['port']}_*")
    # A wrong average (a missed rank, a doubled scale) shows from step 2 on; measured: 6e-7 at most over the
    # first 8 steps. Later, Adam at lr 2e-3 turns summation-order differences into weight differences of ~lr:
    # ZeRO-2 shares prompts in sub-batches of 4 pairs per rank there, of 8 in one process, and ends 1e-4 apart
    # in the loss and 2.1e-3 (relative) in the mean chosen score; ZeRO-0: 2e-5, ZeRO-3: 4.6e-4.
    torch.testing.assert_close(torch.tensor(step_losses(run["out"])[:8]), torch.tensor(step_losses(single["out"])[:8]),
                               rtol=0, atol=1e-5)
    for key in ("accuracy", "chosen_mean", "rejected_mean"):
        assert run["results"][key] == pytest.approx(single["results"][key], rel=5e-3, abs=1e-4), key


@pytest.mark.slow
def test_nvme_offload_swaps_in_the_configured_folder(runs):
    run = runs("zero3_infinity_nvme")
    swapped = os.listdir(run["folder"] / "nvme" / "zero_stage_3")  # DeepSpeed deletes the swap files, not folders
    assert "optimizer" in swapped and any(name.endswith("params") for name in swapped), swapped


# ---- the config files are the flags applied to the card's config ----------------------------------------

def resolve(base, argv, device="cuda"):
    args, typed = parse_args(["--output_dir", "x"] + argv)
    return resolve_ds_config(base, args, typed, 1, device, True)[0]


@pytest.mark.parametrize("name,flags", [("zero1", ["--zero_stage", "1"]), ("zero2", ["--zero_stage", "2"]),
                                        ("zero3", ["--zero_stage", "3"]),
                                        ("zero2_offload", ["--zero_stage", "2", "--offload"]),
                                        ("zero3_offload", ["--zero_stage", "3", "--offload"])])
def test_config_file_equals_flags_on_the_card_config(name, flags):
    card = load_ds_config(os.path.join(HERE, "ds_config.json"))
    assert resolve(load_ds_config(config(name)), []) == resolve(card, flags)


def test_config_files_change_only_zero_and_prescale():
    card = load_ds_config(os.path.join(HERE, "ds_config.json"))
    names = sorted(os.listdir(CONFIGS))
    assert names == ["zero1.json", "zero2.json", "zero2_offload.json", "zero3.json", "zero3_infinity_nvme.json",
                     "zero3_offload.json"]
    for name in names:
        ds_config = load_ds_config(os.path.join(CONFIGS, name))
        changed = {key for key in card.keys() | ds_config.keys() if card.get(key) != ds_config.get(key)}
        stage = ds_config["zero_optimization"]["stage"]
        # DeepSpeed refuses prescale_gradients with ZeRO-2/3 reduce-scatter
        assert changed == ({"zero_optimization", "prescale_gradients"} if stage >= 2 else {"zero_optimization"})
    nvme = load_ds_config(config("zero3_infinity_nvme"))["zero_optimization"]
    assert nvme["offload_optimizer"]["device"] == nvme["offload_param"]["device"] == "nvme"
