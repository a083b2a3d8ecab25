"""mmcv.cnn.utils.weight_init.trunc_normal_: the same truncated-normal fill as torch's / timm's."""

import torch


def trunc_normal_(tensor: torch.Tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0, b: float = 2.0):
    return torch.nn.init.trunc_normal_(tensor, mean=mean, std=std, a=a, b=b)
