"""Chooses who renders: the CUDA extension for CUDA tensors when it is available, the
reference otherwise. Both expose the same three stages."""
from . import reference


def for_device(device):
    if device.type == "cuda":
        from . import cuda_backend
        if cuda_backend.available():
            return cuda_backend
    return reference
