"""Shared test set-up: one thread per test worker (``make test`` runs two workers on two cores)."""

import os

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
