"""Start a command under `accelerate launch` with n CPU processes, as users do on GPUs (shared by launched tests).

On CPU, `accelerate launch --cpu --num_processes 2` starts a single process unless MPI is set up; n CPU
processes come from the torchrun-based launcher (`--multi_gpu`) with ACCELERATE_USE_CPU=1, which makes accelerate
pick MULTI_CPU with the gloo backend. CUDA_VISIBLE_DEVICES is emptied so a GPU machine runs the same. The launcher
gets its own session, so a timeout kills it and every process it started.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_launch(args: list[str], *, num_processes: int = 2, timeout: float = 150.0,
                      config_file: str = "") -> str:
    """`accelerate launch --num_processes n <args>` (args: a script and its arguments, or `-m module ...`) with
    1 OpenMP thread per process; returns the output, fails the test with its tail on an error or timeout.
    `config_file` (relative to the repository) launches with an accelerate config (e.g. FSDP) instead of
    `--multi_gpu`; the process count, precision and dynamo settings given here override the file's."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="", ACCELERATE_USE_CPU="1", MASTER_ADDR="127.0.0.1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    how = ["--config_file", str(REPO / config_file)] if config_file else ["--multi_gpu"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *how, "--num_processes", str(num_processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), *args]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the processes it started
        out, _ = proc.communicate()
        pytest.fail(f"accelerate launch timed out after {timeout}s:\n{out[-4000:]}")
    assert proc.returncode == 0, f"accelerate launch failed ({proc.returncode}):\n{out[-4000:]}"
    return out
