"""Every DeepSpeed setup the card promises, trained through main.py on a tiny OPT (CPU, gloo).

ZeRO 0-3, ZeRO-Offload (CPU) for stages 2 and 3, ZeRO-Infinity (NVMe), LoRA and gradient checkpointing,
one process and two ranks. Each run must finish, log finite losses that fall on the learnable task, and
save a model that `RewardModel.from_pretrained` reloads with the scores main.py reported at the end of
training. Same seed and data must give the same training under ZeRO 0, 1, 2 and 3, and on 2 ranks.

Run: python -m pytest tests/test_zero_matrix.py -q     (-m "not slow" skips 2-rank, offload and NVMe runs)
"""
import glob
import json
import math
import os
import shutil
import sys

import pytest
import torch

from main import HERE, parse_args
from model.reward_model import RewardModel
from tests.fixtures import eval_accuracies, learnable_pairs, run_main, step_losses, write_jsonl
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


def train(tiny_opt, data, folder, flags, ranks=1):
    """One main.py run; returns its log, output folder, step losses and final results."""
    launcher, port = None, free_port()
    if ranks > 1:
        deepspeed = shutil.which("deepspeed") or os.path.join(os.path.dirname(sys.executable), "deepspeed")
        launcher = [deepspeed, "--num_gpus", str(ranks), "--master_port", port]
        flags = list(flags) + ["--per_device_train_batch_size", str(MICRO // ranks)]  # same global batch
    out = folder / "out"
    result = run_main(["--model_name_or_path", tiny_opt, "--data_path", data["path"], "--output_dir", out,
                       "--data_output_path", data["cache"]] + FAST + list(flags), launcher=launcher)
    log = result.stdout
    assert result.returncode == 0, log[-3000:]
    bf16 = json.loads((out / "ds_config.json").read_text())["bf16"]["enabled"]
    return {"log": log, "out": str(out), "losses": step_losses(log), "dtype": "bf16" if bf16 else "fp32", "port": port,
            "results": json.loads((out / "train_results.json").read_text())}


def reloaded_metrics(run, data):
    """Eval metrics of the saved model, reloaded with no LoRA code and scored outside DeepSpeed."""
    from transformers import AutoTokenizer

    from data import build_pair_datasets
    from training.evaluation import eval_loader, evaluate
    model = RewardModel.from_pretrained(run["out"])
    tokenizer = AutoTokenizer.from_pretrained(run["out"])
    _, eval_set = build_pair_datasets([data["path"]], "0,10,0", 1234, tokenizer, 64, data["cache"],
                                      model.end_of_conversation_token, model.num_padding_at_beginning)
    loader, num_real = eval_loader(eval_set, 32, tokenizer.pad_token_id)  # the batches main.py scored
    return evaluate(model, loader, torch.device("cpu"), num_real)


def check_learns_and_reloads(run, data):
    losses, results = run["losses"], run["results"]
    assert len(losses) == STEPS and all(math.isfinite(x) for x in losses), losses
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.05, losses
    accuracies = eval_accuracies(run["log"])
    assert accuracies[-1] > accuracies[0] + 0.15, accuracies
    assert results["optimizer_steps"] == STEPS
    reloaded = reloaded_metrics(run, data)
    tolerance = SCORE_TOLERANCE[run["dtype"]] * results["reward_std"]
    for key in ("chosen_mean", "rejected_mean"):
        assert reloaded[key] == pytest.approx(results[key], abs=tolerance), (key, reloaded, results)
    assert reloaded["accuracy"] == pytest.approx(results["accuracy"], abs=1.5 / EVAL_PAIRS)


# ---- the four ZeRO stages, one process, fp32: each learns and reloads, and all train alike ---------------

# The config files as --deepspeed_config. ZeRO-3 also recomputes activations (gradient checkpointing):
# in fp32 without dropout that changes no number, so its loss curve must still match.
STAGE_FLAGS = {0: ["--deepspeed_config", os.path.join(HERE, "ds_config.json")],
               1: ["--deepspeed_config", config("zero1")], 2: ["--deepspeed_config", config("zero2")],
               3: ["--deepspeed_config", config("zero3"), "--gradient_checkpointing"]}


@pytest.fixture(scope="module")
def stage_runs(tiny_opt, data, tmp_path_factory):
    """Runs made on demand and shared by the tests below: {stage: run}."""
    runs = {}

    def get(stage):
        if stage not in runs:
            runs[stage] = train(tiny_opt, data, tmp_path_factory.mktemp(f"zero{stage}"), STAGE_FLAGS[stage] + FP32)
        return runs[stage]
    return get


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_zero_stage_learns_and_reloads(stage, stage_runs, data):
    run = stage_runs(stage)
    assert f'"stage": {stage}' in run["log"]  # the merged config main.py logged
    check_learns_and_reloads(run, data)


def test_zero_0_1_2_3_give_the_same_loss_curve(stage_runs):
    """Same seed and data: ZeRO only changes where optimizer states, gradients and weights live, not the
    maths (fp32). A curve that drifts apart means a wiring bug (a missed gradient, a wrong scale)."""
    reference = stage_runs(0)
    for stage in (1, 2, 3):
        run = stage_runs(stage)
        # the log prints 4 decimals: allow one rounding step
        torch.testing.assert_close(torch.tensor(run["losses"]), torch.tensor(reference["losses"]), rtol=0,
                                   atol=1.5e-4, msg=f"ZeRO-{stage} vs ZeRO-0")
        # ZeRO-1/2 reduce and clip over flat fp32 buffers (another summation order) and ZeRO-3 runs linear
        # layers through its own autograd function: rounding differs slightly and 16 Adam steps carry it
        # into the final scores (ZeRO-1 vs 0 measured 3.2e-5 relative). The ZeRO-3 run also checkpoints,
        # so it computes every row in full where the others share prompts in one unpadded row (another
        # summation order in every weight gradient: 2.2e-3 relative measured)
        for key in ("chosen_mean", "rejected_mean"):
            assert run["results"][key] == pytest.approx(reference["results"][key], rel=5e-3 if stage == 3 else 1e-4)


# ---- LoRA, with and without gradient checkpointing (ZeRO-2, one process) --------------------------------
# Checkpointing without LoRA is the ZeRO-3 run above.

LORA_CASES = {
    # bf16: the merge rounds W + BA to bf16. Adapter lr 2e-2, not 5e-2: at 5e-2 some dropout streams saturate
    # the bf16 rewards (59 of 64 eval pairs tied at ~2.5), so the test would measure luck, not learning
    "lora": ["--lora_dim", "8", "--lora_learning_rate", "2e-2"],
    # adapters and the value head only: a frozen base learns slower, hence the higher head lr
    "lora+only_optimize_lora+checkpointing": FP32 + LORA + ["--only_optimize_lora", "--gradient_checkpointing",
                                                            "--learning_rate", "2e-2"],
}


@pytest.mark.parametrize("case", LORA_CASES)
def test_lora_learns_and_saves_merged_weights(case, tiny_opt, data, tmp_path):
    run = train(tiny_opt, data, tmp_path, ["--deepspeed_config", config("zero2")] + LORA_CASES[case])
    check_learns_and_reloads(run, data)


# ---- ZeRO-Offload and ZeRO-Infinity (config files as --deepspeed_config) ----------------------------------

def skip_unless_op_compatible(builder_name, reason):
    from deepspeed.ops import op_builder
    if not getattr(op_builder, builder_name)().is_compatible(verbose=False):
        pytest.skip(reason)


@pytest.mark.slow  # DeepSpeedCPUAdam compiles a C++ op on first use (about 2 minutes on 2 cores)
@pytest.mark.parametrize("name", ["zero2_offload", "zero3_offload"])
def test_zero_offload_learns_and_reloads(name, tiny_opt, data, tmp_path):
    skip_unless_op_compatible("CPUAdamBuilder", "ZeRO-Offload needs DeepSpeedCPUAdam, whose C++ op is not compatible with this system (ds_report)")
    run = train(tiny_opt, data, tmp_path, ["--deepspeed_config", config(name)])
    assert '"offload_optimizer": {"device": "cpu"' in run["log"]  # the merged config main.py logged
    check_learns_and_reloads(run, data)


@pytest.mark.slow
def test_zero3_infinity_nvme_learns_and_reloads(tiny_opt, data, tmp_path):
    skip_unless_op_compatible("AsyncIOBuilder", "ZeRO-Infinity's NVMe offload needs DeepSpeed's async_io op, which "
                          "needs libaio (headers and libaio.so; apt-get install libaio-dev): `ds_report` shows "
                          "async_io not compatible here")
    nvme = tmp_path / "nvme"
    nvme.mkdir()
    ds_config = load_ds_config(config("zero3_infinity_nvme"))
    for key in ("offload_optimizer", "offload_param"):
        ds_config["zero_optimization"][key]["nvme_path"] = str(nvme)
    (tmp_path / "ds_config.json").write_text(json.dumps(ds_config))
    run = train(tiny_opt, data, tmp_path, ["--deepspeed_config", tmp_path / "ds_config.json"])
    swapped = os.listdir(nvme / "zero_stage_3")  # DeepSpeed deletes the swap files at exit, not the folders
    assert "optimizer" in swapped and any(name.endswith("params") for name in swapped), swapped
    check_learns_and_reloads(run, data)


# ---- two ranks ------------------------------------------------------------------------------------------

# ZeRO-0 with a sub-batch wherever it saves padding: the token-embedding rows each pass adds into .grad
# (training/embedding_grad.py) must reach DeepSpeed's all-reduce like autograd's gradients.
TWO_RANK_FLAGS = {0: ["--sub_batches", "0"], 2: [], 3: []}


@pytest.mark.slow
@pytest.mark.parametrize("stage", TWO_RANK_FLAGS)
def test_two_ranks_train_like_one_process(stage, tiny_opt, data, tmp_path, stage_runs):
    """Each rank takes half of every global batch of 8 (DistributedSampler): the averaged gradient, hence
    the trained model, equals the one-process run's (fp32, no dropout; --zero_stage here, the config files
    there)."""
    run = train(tiny_opt, data, tmp_path, ["--zero_stage", str(stage)] + TWO_RANK_FLAGS[stage] + FP32, ranks=2)
    assert "world_size=2" in run["log"] or "dist_world_size=2" in run["log"]
    if stage > 1:
        assert "config: prescale_gradients: true -> false" in run["log"]
    check_learns_and_reloads(run, data)
    # DeepSpeed's CPU all-reduce files (66 MB of RAM each) are gone with the run (utils/dist.init_distributed)
    assert not glob.glob(f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_*_{run['port']}_*")
    single = stage_runs(stage)
    # The same update each step: the logged losses agree to their printed precision (and Adam's steps). The
    # final scores drift further apart (2e-3 relative measured for ZeRO-2): each rank cuts its own half of a
    # micro batch into sub-batches and shared-prompt rows, so fp32 sums run in another order, carried by Adam.
    torch.testing.assert_close(torch.tensor(run["losses"]), torch.tensor(single["losses"]), rtol=0, atol=2e-4)
    for key in ("accuracy", "chosen_mean", "rejected_mean"):
        assert run["results"][key] == pytest.approx(single["results"][key], rel=5e-3, abs=1e-4), key


@pytest.mark.slow
def test_two_ranks_zero3_lora_merges_partitioned_weights(tiny_opt, data, tmp_path):
    """Under ZeRO-3 each rank holds a slice of every weight: the merge must gather them first."""
    flags = ["--zero_stage", "3"] + LORA_CASES["lora+only_optimize_lora+checkpointing"]
    check_learns_and_reloads(train(tiny_opt, data, tmp_path, flags, ranks=2), data)


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
