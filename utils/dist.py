"""Distributed helpers that also work with a single process and no process group."""
import os
import sys

import torch
import torch.distributed as dist


def set_single_process_defaults():
    """Let `python main.py ...` run without a launcher: fill the env vars DeepSpeed reads."""
    defaults = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": free_port()}
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


def free_port():
    """A TCP port free on every interface right now, as a string."""
    import socket
    with socket.socket() as s:
        s.bind(("", 0))  # all interfaces: a port free on 127.0.0.1 alone may be taken on another address
        return str(s.getsockname()[1])


def init_distributed():
    """deepspeed.init_distributed(), then drop the names of DeepSpeed's CPU all-reduce buffers.

    With several ranks on one machine, DeepSpeed's CPU backend maps a ~66 MB file per rank,
    /dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>, and never removes it: every run
    would leave its files (RAM) behind until reboot. init_distributed returns once this rank has
    mapped every rank's file; after a barrier all have, so each rank unlinks its own. The memory
    stays mapped until the processes exit, however they exit.
    """
    import deepspeed
    deepspeed.init_distributed()
    if get_world_size() > 1:
        barrier()
        name = "_".join(["deepspeed_allreduce_buffer", str(os.getuid()), os.environ.get("MASTER_ADDR", ""),
                         os.environ.get("MASTER_PORT", ""), str(get_rank())])
        try:
            os.remove(os.path.join("/dev/shm", name))
        except OSError:  # no such file: not the CPU backend, or ranks on several machines
            pass


def is_initialized():
    return dist.is_available() and dist.is_initialized()


def get_rank():
    return dist.get_rank() if is_initialized() else int(os.environ.get("RANK", 0))


def get_world_size():
    return dist.get_world_size() if is_initialized() else int(os.environ.get("WORLD_SIZE", 1))


def is_main_process():
    return get_rank() == 0


def barrier():
    if is_initialized():
        dist.barrier()


def all_reduce(tensor, op="sum"):
    """Sum (or "max") a tensor over ranks in place (no-op with one process); returns it. Works for
    tensors on any device: NCCL only reduces accelerator tensors, gloo CPU ones."""
    if is_initialized() and get_world_size() > 1:
        if dist.get_backend() == "gloo":
            comm = tensor.cpu()
        else:
            from deepspeed.accelerator import get_accelerator
            comm = tensor.to(get_accelerator().current_device_name())
        dist.all_reduce(comm, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
        if comm is not tensor:
            tensor.copy_(comm)
    return tensor


def all_gather_rows(tensor):
    """(n, C) rows of every rank stacked in rank order, (world * n, C), on every rank (the tensor itself with one
    process); every rank must give the same shape."""
    if not (is_initialized() and get_world_size() > 1):
        return tensor
    if dist.get_backend() == "gloo":
        comm = tensor.cpu()
    else:
        from deepspeed.accelerator import get_accelerator
        comm = tensor.to(get_accelerator().current_device_name())
    parts = [torch.empty_like(comm) for _ in range(get_world_size())]
    dist.all_gather(parts, comm)
    return torch.cat(parts).to(tensor.device)


def print_rank0(message):
    """The one rank-0 print: a line on stdout that does not break a tqdm progress bar."""
    if is_main_process():
        from tqdm import tqdm
        tqdm.write(str(message), file=sys.stdout)
        sys.stdout.flush()
