"""mmseg.models shim: no eager imports."""
