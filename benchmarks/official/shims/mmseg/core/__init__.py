"""mmseg.core shim: ``build_pixel_sampler`` (only called when a head has ``sampler``; the ADE20K
UPerNet config has none)."""


def build_pixel_sampler(cfg, **default_args):
    raise NotImplementedError("pixel samplers are a training feature, not emulated")
