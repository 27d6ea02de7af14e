import torch

from vlm_dpo.machine import machine_info, matmul_gflops


def test_the_matmul_rate_is_measured_at_the_asked_threads_and_leaves_torch_as_it_was():
    before = torch.get_num_threads()
    rate = matmul_gflops(1, size=128, seconds=0.05)
    assert rate > 0 and torch.get_num_threads() == before
    info = machine_info(1)
    assert info["threads"] == 1 and info["logical_cores"] >= 1 and info["cpu"]
    assert info["torch"] == torch.__version__
    # threads 0 means torch's current count, as the run config's `threads: 0` does
    assert machine_info(0)["threads"] == torch.get_num_threads()
