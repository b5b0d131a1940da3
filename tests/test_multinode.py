"""Two "nodes" (this machine reached over ssh) trained through DeepSpeed's multi-node launcher.

Run: python -m pytest tests/test_multinode.py -q    (marked slow; ~35 s here)

What it does, so a failure is easy to place:
- needs openssh-server, openssh-client and pdsh (.ci/run installs them; without them the test is skipped
  with the command that installs them);
- starts its own sshd on a free 127.0.0.1 port with throwaway keys, all in a temp folder (the only
  system path it may create is sshd's privilege-separation folder /run/sshd, removed again after);
- points `ssh` at its own client config through a wrapper first on PATH, so `node-a` and `node-b`
  both mean 127.0.0.1 on that port for DeepSpeed's ssh check and for pdsh (~/.ssh is not touched);
- runs training_scripts/multi_node/run_350m.sh with the hostfile "node-a slots=1 / node-b slots=1",
  a tiny OPT and a small pair folder, then checks both nodes ran a rank, training finished and
  exactly one reloadable model was saved.
Every process it starts is stopped at the end: sshd and the ranks under it by pid, the launcher (with pdsh and
ssh) by its process group if it runs past 15 minutes.
"""
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import psutil
import pytest

from model.reward_model import RewardModel
from tests.fixtures import ROOT, Child, step_losses
from utils.dist import free_port

PACKAGES = {"sshd": "openssh-server", "ssh": "openssh-client", "ssh-keygen": "openssh-client", "pdsh": "pdsh"}
PRIVSEP_DIR = "/run/sshd"  # compiled into Debian's sshd; it refuses to start without it
HOSTS = ("node-a", "node-b")

SSHD_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {folder}/host_key
PidFile {folder}/sshd.pid
AuthorizedKeysFile {folder}/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
"""
SSH_CONFIG = """\
Host {hosts}
  HostName 127.0.0.1
  Port {port}
  IdentityFile {folder}/user_key
  IdentitiesOnly yes
  UserKnownHostsFile {folder}/known_hosts
  StrictHostKeyChecking yes
  BatchMode yes
  LogLevel ERROR
"""


def find_tool(name):
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def ensure_packages():
    """Skip, with the command to run, when the ssh server, client or pdsh is missing (.ci/run installs them)."""
    missing = sorted({package for tool, package in PACKAGES.items() if not find_tool(tool)})
    if missing:
        pytest.skip(f"needs {' '.join(missing)}: apt-get install -y {' '.join(missing)} (as .ci/run does)")


def stop(popen):
    """Terminate a child process and all its descendants, by pid; kill whatever outlives 10 s."""
    if popen.poll() is not None:  # already exited and reaped: its pid may belong to someone else now
        return
    try:
        parent = psutil.Process(popen.pid)
        processes = parent.children(recursive=True) + [parent]
    except psutil.NoSuchProcess:
        return
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=10)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=10)
    popen.wait(timeout=10)


def remove_privsep_dir():
    with contextlib.suppress(OSError):  # something else (a system sshd) may have started using it meanwhile
        os.rmdir(PRIVSEP_DIR)


def start_sshd(folder, port, request):
    """Our own sshd on 127.0.0.1:port (not the system service); skips if this machine cannot run one."""
    if not os.path.isdir(PRIVSEP_DIR) and os.geteuid() == 0:
        os.makedirs(PRIVSEP_DIR, mode=0o755)
        request.addfinalizer(remove_privsep_dir)
    log = open(folder / "sshd.log", "w")
    request.addfinalizer(log.close)
    sshd = subprocess.Popen([find_tool("sshd"), "-D", "-e", "-f", str(folder / "sshd_config")],
                            stdout=log, stderr=subprocess.STDOUT)
    request.addfinalizer(lambda: stop(sshd))
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if sshd.poll() is not None:
            pytest.skip(f"sshd cannot run here (exit {sshd.returncode}): {(folder / 'sshd.log').read_text()[-1000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return sshd
        time.sleep(0.2)
    pytest.skip(f"sshd did not listen on 127.0.0.1:{port} within 15 s: {(folder / 'sshd.log').read_text()[-1000:]}")


@pytest.fixture
def ssh_nodes(tmp_path, request):
    """An environment (dict) in which `ssh node-a` and `ssh node-b` reach this machine without a password."""
    ensure_packages()
    folder = tmp_path / "ssh"
    folder.mkdir(mode=0o700)
    for name in ("host_key", "user_key"):
        subprocess.run([find_tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", "test_multinode",
                        "-f", str(folder / name)], check=True, timeout=60)
    shutil.copy(folder / "user_key.pub", folder / "authorized_keys")
    port = int(free_port())
    (folder / "known_hosts").write_text(f"[127.0.0.1]:{port} {(folder / 'host_key.pub').read_text()}")
    (folder / "sshd_config").write_text(SSHD_CONFIG.format(port=port, folder=folder))
    (folder / "ssh_config").write_text(SSH_CONFIG.format(hosts=" ".join(HOSTS), port=port, folder=folder))
    # ssh reads ~/.ssh/config from the passwd home, not $HOME; DeepSpeed's check and pdsh both run plain
    # `ssh`, so a wrapper first on PATH is the one place that makes every caller use our config.
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(f'#!/bin/sh\nexec {find_tool("ssh")} -F {folder}/ssh_config "$@"\n')
    (bin_dir / "ssh").chmod(0o755)
    request.addfinalizer(lambda: shutil.rmtree(folder, ignore_errors=True))
    start_sshd(folder, port, request)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.path.dirname(sys.executable)}:{os.environ['PATH']}")
    for host in HOSTS:
        check = subprocess.run(["ssh", host, "true"], env=env, capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, (f"ssh {host}: {check.stderr}\nsshd log:\n"
                                       f"{(folder / 'sshd.log').read_text()[-2000:]}")
    return env


def host_lines(log, host):
    """pdsh prefixes every line a node prints with 'host: '."""
    return "\n".join(line for line in log.splitlines() if line.startswith(f"{host}: "))


@pytest.mark.slow
def test_two_nodes_over_ssh_train_and_rank0_saves(ssh_nodes, tiny_opt, pair_folder, tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("".join(f"{host} slots=1\n" for host in HOSTS))
    out = tmp_path / "out"
    master_port = free_port()
    env = dict(ssh_nodes, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(master_port))
    command = ["bash", os.path.join(ROOT, "training_scripts/multi_node/run_350m.sh"), str(out), "2", str(hostfile),
               "--model_name_or_path", tiny_opt, "--data_path", pair_folder, "--data_split", "0,10,0",
               "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1", "--max_seq_len", "64",
               "--num_train_epochs", "1", "--data_output_path", str(tmp_path / "cache")]
    launcher = Child(command, timeout=900, env=env)  # past it: pdsh, ssh and the ranks under it are killed
    code = launcher.wait()
    log = launcher.log()
    assert code == 0, log[-4000:]
    # DeepSpeed's runner logs the pdsh command it built from the hostfile and the script's flags
    assert "cmd = pdsh" in log and "-w node-a,node-b" in log, log[:3000]
    assert f"--master_addr=127.0.0.1 --master_port={master_port}" in log, log[:3000]
    for node_rank, host in enumerate(HOSTS):
        lines = host_lines(log, host)
        assert f"nnodes=2, num_local_procs=1, node_rank={node_rank}" in lines, log[-4000:]
        assert "dist_world_size=2" in lines and "exits successfully" in lines, lines[-2000:]
    # 384 pairs / (4 per rank x 2 ranks): each step took a micro-batch from both ranks; rank 0 (node-a) logs
    assert len(step_losses(out)) == 384 // 8
    assert re.search(r"^node-a: step 1 \| loss", log, re.M) and not re.search(r"^node-b: step \d+ \|", log, re.M)
    assert "saved reward model" in host_lines(log, "node-a")
    saved = [os.path.join(d, f) for d, _, files in os.walk(out) for f in files if f == "model.safetensors"]
    assert saved == [str(out / "model.safetensors")]
    RewardModel.from_pretrained(str(out))
