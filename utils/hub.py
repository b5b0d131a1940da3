"""A quick reachability probe, so offline users get an error in seconds instead of minutes of retries."""
import os
import socket
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 3


def hub_unreachable_reason():
    """None if the Hugging Face hub answers (or a probe says nothing: offline mode, a proxy), else the error."""
    from huggingface_hub import constants
    if constants.HF_HUB_OFFLINE:
        return None  # offline mode: the libraries read the local cache and fail fast themselves
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # a direct connection says nothing about the proxy
    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as error:
        return error
    return None
