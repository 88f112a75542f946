"""Where models run: the one resolution of the config's ``device`` key."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cortexflow.errors import CortexflowInputError

if TYPE_CHECKING:
    import torch


def resolve_device(device: "str | torch.device") -> "torch.device":
    """``device`` as a torch device (``auto``: CUDA when available); CUDA asked for without CUDA is an error."""
    import torch

    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise CortexflowInputError(f"device {str(device)!r} was asked for but CUDA is not available",
                                   fix="set device: cpu (or auto) in the config, or run on a GPU node")
    return resolved
