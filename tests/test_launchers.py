"""Every launcher passes only flags main.py accepts. Run: python -m pytest tests/test_launchers.py -q

A fake `deepspeed` on PATH records the command line each script builds; main.py's parser must accept it.
"""
import json
import os
import sys

import pytest

from main import parse_args
from tests.fixtures import ROOT, run_command

FAKE_DEEPSPEED = f"""#!{sys.executable}
import json, sys
with open({{path!r}}, "w") as f:
    json.dump(sys.argv[1:], f)
"""
LAUNCHERS = ["training_scripts/run_350m.sh", "training_scripts/single_gpu/run_350m.sh",
             "training_scripts/single_node/run_350m.sh", "training_scripts/multi_node/run_350m.sh"]


def launch(script, tmp_path, *script_args, env=None):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    record = tmp_path / "argv.json"
    fake = bin_dir / "deepspeed"
    fake.write_text(FAKE_DEEPSPEED.format(path=str(record)))
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", **(env or {}))
    result = run_command(["bash", os.path.join(ROOT, script), *script_args], timeout=60, env=env)
    argv = json.loads(record.read_text()) if record.exists() else None
    return result, argv


def main_args(argv):
    return argv[[i for i, a in enumerate(argv) if a.endswith("main.py")][0] + 1:]


@pytest.mark.parametrize("script", LAUNCHERS)
def test_launcher_flags_parse_and_match_the_card(script, tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=2\nnode-b slots=2\n")
    output = tmp_path / "out"
    extra = [str(hostfile)] if "multi_node" in script else []
    result, argv = launch(script, tmp_path, str(output), "2", *extra)
    assert result.returncode == 0, result.stdout
    args, typed = parse_args(main_args(argv))
    assert args.model_name_or_path == "facebook/opt-350m" and args.num_padding_at_beginning == 1
    assert args.data_path == ["Dahoas/rm-static", "Dahoas/full-hh-rlhf",
                              "Dahoas/synthetic-instruct-gptj-pairwise", "yitingxie/rlhf-reward-datasets"]
    assert (args.data_split, args.max_seq_len, args.learning_rate, args.weight_decay) == ("2,4,4", 512, 5e-5, 0.1)
    assert (args.dropout, args.num_train_epochs, args.lr_scheduler_type, args.seed) == (0.1, 1, "cosine", 1234)
    assert args.num_warmup_steps == 0 and args.zero_stage == 2 and args.output_dir == str(output)
    assert os.path.samefile(args.deepspeed_config, os.path.join(ROOT, "ds_config.json"))
    assert (output / "training.log").exists()
    if "multi_node" in script:
        assert argv[:2] == ["--hostfile", str(hostfile)] and "--master_addr" in argv


def test_zero_stage_defaults_to_the_config(tmp_path):
    _, argv = launch("training_scripts/run_350m.sh", tmp_path, str(tmp_path / "out"))
    assert "zero_stage" not in parse_args(main_args(argv))[1]


def test_bad_hostfile_line_is_reported_with_its_number(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# nodes\nnode-a slots=2\nnode-b slots two\n")
    result, argv = launch("training_scripts/multi_node/run_350m.sh", tmp_path, str(tmp_path / "o"), "", str(hostfile))
    assert result.returncode != 0 and argv is None
    assert "line 3" in result.stdout and "node-b slots two" in result.stdout
