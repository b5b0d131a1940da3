"""Writing files so that no kill, crash or full disk leaves a half-written or lost result.

Every folder the project writes for a user (model, export, evaluation and benchmark results) is written
into a staging folder (`TARGET/.saving`), marked whole, then published file by file with `publish`;
`recover` finishes or undoes a publish that a kill interrupted. Single files (JSON, scores) go through
`atomic_file`.
"""
import contextlib
import errno
import hashlib
import json
import os
import shutil

import torch

# In a staging folder: the old files being replaced, the names of old files to remove, the staging-is-whole mark.
STAGING, REPLACED, REMOVES, WHOLE = ".saving", ".replaced", ".removes", ".whole"


def write_json(path, content):
    with atomic_file(path) as f:
        json.dump(content, f, indent=2, default=_jsonable)
        f.write("\n")


def _jsonable(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return str(value)


@contextlib.contextmanager
def atomic_file(path, mode="w"):
    """Open `path + '.tmp'` for writing; on success it replaces `path` in one step, on error it is removed."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, mode) as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def sha256_file(path):
    """The SHA-256 hex digest of a file's bytes, read in 1 MiB blocks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def is_disk_full(error):
    """True for 'no space left' errors, including torch's and safetensors' wrappers of them."""
    return getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(error) \
        or "unexpected pos" in str(error) or "file write failed" in str(error)


def output_folder_problem(path):
    """Why `path` cannot be written to as a folder (it, or the folder it would be made in, is a file or not
    writable), or None."""
    existing = path
    while existing and not os.path.exists(existing):
        existing = os.path.dirname(existing.rstrip(os.sep)) or "."
    if not os.path.isdir(existing):
        return "it is a file: pass a folder" if existing == path else f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable: pick a folder you can write to"
    return None


def staging_folder(target, name=STAGING):
    """A fresh, empty staging folder `target/name` to write into (after finishing an interrupted publish from
    it). Writers that share `target` use different names."""
    recover(target, name)
    staging = os.path.join(target, name)
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    return staging


def publish(target, name=STAGING, replaces=()):
    """Move the files of the whole staging folder `target/name` into `target`, replacing same-named ones.
    `replaces` names every file a previous run of the same writer may have left: those the new set lacks are
    removed, so no output of the previous run outlives it.

    Order: record the files to remove; mark staging whole; move the files it replaces or removes into
    `name/.replaced`; move the new files in (weights last); remove staging. Until the mark exists the old
    files are untouched; after it the new set is complete on disk, and `recover` finishes the move.
    """
    staging = os.path.join(target, name)
    with open(os.path.join(staging, REMOVES), "w") as f:
        json.dump(sorted(set(replaces) - set(os.listdir(staging))), f)
    open(os.path.join(staging, WHOLE), "w").close()
    _finish(target, staging)


def recover(target, name=STAGING):
    """Finish a publish from `target/name` that a kill interrupted; True if there was one. (A staging folder
    that was never marked whole is left for `staging_folder` to clear: the old files were not touched.)"""
    staging = os.path.join(target, name)
    if os.path.exists(os.path.join(staging, WHOLE)):
        _finish(target, staging)
        return True
    return False


def _finish(target, staging):
    replaced = os.path.join(staging, REPLACED)
    with open(os.path.join(staging, REMOVES)) as f:
        removed = json.load(f)
    names = sorted((n for n in os.listdir(staging) if n not in (WHOLE, REMOVES, REPLACED)),
                   key=lambda n: n.endswith(LAST_SUFFIXES))
    os.makedirs(replaced, exist_ok=True)
    for name in names + removed:
        if os.path.exists(os.path.join(target, name)):
            os.replace(os.path.join(target, name), os.path.join(replaced, name))
    for name in names:
        os.replace(os.path.join(staging, name), os.path.join(target, name))
    shutil.rmtree(staging)


LAST_SUFFIXES = (".safetensors", ".bin")  # weights move in last: a folder with new weights is whole
