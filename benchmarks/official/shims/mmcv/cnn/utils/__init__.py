"""mmcv.cnn.utils shims (weight initialisers)."""
