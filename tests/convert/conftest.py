import pytest


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread is fastest, and never stalls on a busy CPU."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
