"""What the security tests plant in a store: a pickle that runs code (creates a marker file) when unpickled."""

from __future__ import annotations

import io


class Payload:
    """Unpickling it creates the file ``marker`` (``open(marker, "w")``): stands for any code."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def torch_file(obj) -> bytes:
    """``obj`` as ``torch.save`` writes it (a state.pt)."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()
