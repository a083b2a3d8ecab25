"""mmcv.runner.base_module shims.

mmcv's BaseModule is an nn.Module that stores ``init_cfg`` and whose ``init_weights()`` applies it
(then recurses into children). Here the benchmark loads every weight from a state dict, so
``init_weights`` only recurses into children that define it (running the module-specific parts
such as GPViT's trunc_normal_ on pos_embed); ``init_cfg`` initialisers (Normal, Pretrained, ...)
are recorded but not applied.
"""

from torch import nn


class BaseModule(nn.Module):
    def __init__(self, init_cfg=None):
        super().__init__()
        self._is_init = False
        self.init_cfg = init_cfg

    @property
    def is_init(self):
        return self._is_init

    def init_weights(self):
        for module in self.children():
            if hasattr(module, "init_weights"):
                module.init_weights()
        self._is_init = True


class Sequential(BaseModule, nn.Sequential):
    def __init__(self, *args, init_cfg=None):
        BaseModule.__init__(self, init_cfg)
        nn.Sequential.__init__(self, *args)


class ModuleList(BaseModule, nn.ModuleList):
    def __init__(self, modules=None, init_cfg=None):
        BaseModule.__init__(self, init_cfg)
        nn.ModuleList.__init__(self, modules)


class ModuleDict(BaseModule, nn.ModuleDict):
    def __init__(self, modules=None, init_cfg=None):
        BaseModule.__init__(self, init_cfg)
        nn.ModuleDict.__init__(self, modules)
