"""Host tensors onto the device without making the host wait for it."""
from __future__ import annotations

import torch


def on_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t``, made on the host, on ``device``, without making the host wait: a copy to a GPU from pageable
    memory synchronises the stream, so the host would wait for all the GPU's queued work (the step before)
    and the GPU then for the host; from pinned memory the copy is queued like a kernel. The batches' random
    draws (``data.augment``) and the fused cells' plans (``spaces.fused``) move so."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)
