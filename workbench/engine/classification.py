"""Classification evaluation: top-1 / top-5 accuracy, sharded across processes."""

from __future__ import annotations

import torch
from torch import nn
from tqdm import tqdm

from workbench.engine.distributed import all_reduce_sum, is_main


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module, dataset, device, rank: int = 0, world: int = 1, progress: bool = True
) -> dict:
    """Top-1 and top-5 accuracy (percent) of ``model`` on items (image (3, H, W), class index)."""
    was_training = model.training
    model.eval()
    counts = torch.zeros(3, dtype=torch.float64, device=device)  # top-1 hits, top-5 hits, samples
    for index in tqdm(
        range(rank, len(dataset), world), desc="eval", disable=not (progress and is_main()), leave=False
    ):
        image, label = dataset[index]
        top = model(image[None].to(device)).topk(min(5, model.num_classes), dim=1).indices[0].tolist()
        counts += torch.tensor([top[0] == label, label in top, 1.0], dtype=torch.float64, device=device)
    model.train(was_training)
    top1, top5, total = all_reduce_sum(counts).tolist()
    return {"top1": 100 * top1 / max(total, 1), "top5": 100 * top5 / max(total, 1)}
