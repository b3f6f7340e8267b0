"""Shared fixtures for the model tests."""

import pytest
import torch


@pytest.fixture
def single_thread():
    """Run on one intra-op thread: the toy models here gain nothing from threads, and on a CI box shared with
    other test processes two threads per process only oversubscribe the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
