"""Chooses who renders: the CUDA extension for CUDA tensors when it is available, the
reference otherwise. Both expose the same three stages."""
from . import cuda_backend, reference


def for_device(device):
    if device.type == "cuda" and cuda_backend.available():
        return cuda_backend
    return reference
