"""Shared fixtures: no network anywhere, few threads, and a tiny embedded world built once per session."""

from __future__ import annotations

import os
import socket

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

_LOOPBACK = ("127.", "::1", "localhost")
_real_connect = socket.socket.connect
_real_create_connection = socket.create_connection
_real_getaddrinfo = socket.getaddrinfo


class NetworkBlocked(RuntimeError):
    pass


def _host_of(address) -> str:
    if isinstance(address, tuple) and address:
        return str(address[0])
    return str(address)  # AF_UNIX paths are local


def _is_local(host: str) -> bool:
    return host.startswith(_LOOPBACK) or host.startswith("/") or host == ""


def _guarded_connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(_host_of(address)):
        raise NetworkBlocked(f"test tried to reach the network: {address}")
    return _real_connect(self, address)


def _guarded_create_connection(address, *args, **kwargs):
    if not _is_local(_host_of(address)):
        raise NetworkBlocked(f"test tried to reach the network: {address}")
    return _real_create_connection(address, *args, **kwargs)


def _guarded_getaddrinfo(host, *args, **kwargs):
    if host is not None and not _is_local(str(host)):
        raise NetworkBlocked(f"test tried to resolve {host}")
    return _real_getaddrinfo(host, *args, **kwargs)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every test runs with non-loopback sockets blocked: the toolkit must never reach the network."""
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    monkeypatch.setattr(socket, "create_connection", _guarded_create_connection)
    monkeypatch.setattr(socket, "getaddrinfo", _guarded_getaddrinfo)
    yield


from tiny_config import PIPE, TINY_OVERRIDES  # noqa: E402


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def tiny_cfg(tiny_cache, tmp_path):
    """A config of the tiny world whose cache (world, detector, VLM) is shared by the whole session."""
    from vlm_dpo.config import load_config

    return load_config(None, TINY_OVERRIDES + [f"cache_dir={tiny_cache}", f"out={tmp_path / 'run'}"])





@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory, tiny_cache):
    """The whole pipeline once per session at toy sizes (shares the tiny world/detector/VLM cache)."""
    cache = tiny_cache
    out = tmp_path_factory.mktemp("prun")
    from vlm_dpo.config import load_config
    from vlm_dpo.pipeline import run_pipeline

    cfg = load_config(None, TINY_OVERRIDES + PIPE + [f"cache_dir={cache}", f"out={out}"])
    result = run_pipeline(cfg, progress=False)
    return cfg, out, result
