"""Shared fixtures: one torch thread per test, clean logging, and the generated data sets of
:mod:`tests.data_files`."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from tests.data_files import write_fake_cifar_folder, write_fake_mnist

@pytest.fixture(autouse=True)
def _few_threads(monkeypatch):
    """Tests run on 2 shared cores: one torch thread each keeps them fast and repeatable."""
    monkeypatch.setenv("HOMEWORK_THREADS", "1")
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(autouse=True)
def _logging_handlers_of_one_test():
    """The scripts' setup_logging points the root logger at the sys.stderr of the moment (a test's
    captured stream); remove the handlers a test added, so no later test logs into a closed stream.
    (pytest's own capture handlers come and go with each test phase: left to pytest.)"""
    root = logging.getLogger()
    before = set(root.handlers)
    yield
    for handler in list(root.handlers):
        if handler not in before and not type(handler).__module__.startswith("_pytest"):
            root.removeHandler(handler)
            handler.close()


@pytest.fixture(scope="session")
def fake_mnist(tmp_path_factory) -> Path:
    return write_fake_mnist(tmp_path_factory.mktemp("mnist_data"))


@pytest.fixture(scope="session")
def fake_cifar_folder(tmp_path_factory) -> Path:
    return write_fake_cifar_folder(tmp_path_factory.mktemp("cifar_folder_data"))


@pytest.fixture(scope="session")
def fake_data_dir(tmp_path_factory) -> Path:
    """MNIST + CIFAR-10 image folder side by side, as a user's --data-dir would hold them."""
    root = tmp_path_factory.mktemp("data")
    write_fake_mnist(root)
    write_fake_cifar_folder(root)
    return root
