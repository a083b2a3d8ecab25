"""mmseg.models.decode_heads shim: no eager imports (the head modules are the official files)."""
