"""Distributed helpers that also work with a single process and no process group."""
import os

import torch.distributed as dist


def set_single_process_defaults():
    """Let `python main.py ...` run without a launcher: fill the env vars DeepSpeed reads."""
    defaults = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": _free_port()}
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("", 0))  # all interfaces: a port free on 127.0.0.1 alone may be taken on another address
        return str(s.getsockname()[1])


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


def all_reduce_sum(tensor):
    """Sum a tensor over ranks in place (no-op with one process); returns it. Works for tensors on
    any device: NCCL only reduces accelerator tensors, gloo CPU ones."""
    if is_initialized() and get_world_size() > 1:
        if dist.get_backend() == "gloo":
            comm = tensor.cpu()
        else:
            from deepspeed.accelerator import get_accelerator
            comm = tensor.to(get_accelerator().current_device_name())
        dist.all_reduce(comm, op=dist.ReduceOp.SUM)
        if comm is not tensor:
            tensor.copy_(comm)
    return tensor


def print_rank0(*args, **kwargs):
    if is_main_process():
        print(*args, **kwargs, flush=True)
