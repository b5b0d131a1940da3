"""The release series of the libraries whose internals some code relies on (training/accelerations.py,
model/shared_prompt.py's packed forward), verified with torch 2.13.0, transformers 5.24.0 and deepspeed 0.19.8,
the versions requirements.txt pins. With any other installed version that code stays off."""
from importlib import metadata

VERIFIED = {"torch": "2.13", "transformers": "5.24", "deepspeed": "0.19"}


def unverified_reason(package, found=None):
    """Why `found` (default: the installed version of `package`) is outside the series it was verified on,
    or None when it is inside."""
    found = found or metadata.version(package)
    if found == VERIFIED[package] or found.startswith(VERIFIED[package] + "."):
        return None
    return f"verified on {package} {VERIFIED[package]}.x, found {found}"
