import pytest
import torch


@pytest.fixture(autouse=True)
def _one_intra_op_thread():
    """Run numerics tests with one intra-op thread, restored afterwards.

    These tests run many elementwise kernels on tensors of 10^4-10^6 elements;
    on a small, shared CPU box the thread-pool hand-off costs more than the
    kernels themselves (measured ~50x slower with 2 threads on the 2-core CI
    machine), which would push the suite far past its time budget.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
