"""mmcls.models shim: no eager imports (the real one imports every model in mmcls)."""
