"""The tokenised-pairs cache on disk: its folder key, verification against meta.json, atomic publish,
and the clean-up of damaged folders and of temp folders left by killed builds."""
import hashlib
import json
import os
import re
import shutil
import socket

import datasets
import pyarrow as pa

from data.readers import all_files, one_line
from utils.dist import print_rank0
from utils.errors import UserError
from utils.io import sha256_file

HASHED_BYTES = 1 << 20  # cache files up to this size are hashed in meta.json; larger ones only sized
CACHE_ERRORS = (OSError, ValueError, KeyError, TypeError, pa.ArrowException)  # reading a damaged cache
TEMP_NAME = re.compile(r"(?:pairs|rated)-[0-9a-f]{24}\.tmp-(.+)-(\d+)")  # see data.pairs._build_or_reuse


def cache_folder(cache_dir, sources, settings):
    """cache_dir/<key>: the key hashes the sources' content and every setting that changes the ids."""
    key = {"settings": settings,
           "sources": [(s.identity, s.adapter.describe(), s.eval is None) for s in sources]}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return os.path.join(cache_dir, f"pairs-{digest}")


def is_complete(folder):
    return os.path.isfile(os.path.join(folder, "meta.json"))  # written last, before the rename


def open_cache(folder):
    """The splits meta.json lists, in order: (train, eval), or (eval,) for a held-out set."""
    with open(os.path.join(folder, "meta.json")) as f:
        splits = json.load(f)["rows"]
    return tuple(datasets.load_from_disk(os.path.join(folder, split)) for split in ("train", "eval") if split in splits)


def verify_cache(folder):
    """(meta, None) when every file meta.json lists has its recorded size (and hash, for small files)
    and datasets can open both splits; else (meta or None, what is wrong)."""
    try:
        with open(os.path.join(folder, "meta.json")) as f:
            meta = json.load(f)
        recorded = dict(meta["files"])
    except CACHE_ERRORS as err:
        return None, f"meta.json unreadable: {one_line(err)}"
    try:
        for name, want in sorted(recorded.items()):
            path = os.path.join(folder, name)
            if not os.path.isfile(path):
                return meta, f"{name} is missing"
            if os.path.getsize(path) != want["size"]:
                return meta, f"{name} holds {os.path.getsize(path):,} bytes, {want['size']:,} when built"
            if want["sha256"] is not None and sha256_file(path) != want["sha256"]:
                return meta, f"{name} changed since it was built"
        open_cache(folder)
    except CACHE_ERRORS as err:
        return meta, f"cannot read it: {one_line(err)}"
    return meta, None


def file_records(folder):
    """{relative path: {size, sha256 (None above HASHED_BYTES)}} of the files under `folder`."""
    records = {}
    for name, path in sorted(all_files(folder).items()):
        size = os.path.getsize(path)
        records[name] = {"size": size, "sha256": sha256_file(path) if size <= HASHED_BYTES else None}
    return records


def discard(folder, tmp):
    """Remove a damaged cache folder: renamed first, so no reader sees it half deleted."""
    try:
        os.rename(folder, tmp)
    except FileNotFoundError:  # another builder on a shared disk got there first
        return
    except OSError as err:
        raise UserError(f"{folder} is damaged and cannot be removed ({err}); delete it, or point "
                        "--data_output_path elsewhere.") from err
    shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_temps(cache_dir):
    """Remove this project's temp build folders left on this host by processes that no longer run."""
    host = socket.gethostname()
    for name in os.listdir(cache_dir):
        match = TEMP_NAME.fullmatch(name)
        if match and match[1] == host and not process_alive(int(match[2])):
            print_rank0(f"data: removing {os.path.join(cache_dir, name)}, left by a cache build that was "
                        f"stopped (process {match[2]} is gone)")
            shutil.rmtree(os.path.join(cache_dir, name), ignore_errors=True)


def process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def publish(tmp, folder):
    """Rename the finished `tmp` to `folder`; if another process published it first, keep theirs."""
    if os.path.isdir(folder) and not is_complete(folder):
        shutil.rmtree(folder)  # left by something other than this code: a complete build renames atomically
    try:
        os.rename(tmp, folder)
    except OSError:
        if not is_complete(folder):
            raise
