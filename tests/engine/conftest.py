import pytest
import torch


@pytest.fixture
def one_thread():
    """Training tests compare runs bit for bit; one intra-op thread keeps their reductions in one order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
