"""The workbench's Gradio app: segment a photo, click a pixel to see where the model looks.

    python apps/app.py                                      # the demo model (trained once, cached)
    python apps/app.py --checkpoint runs/demo_gpvit         # a run folder or a converted checkpoint
    python apps/app.py --checkpoint runs/demo_detection     # a detection run: its detections drawn, listed
    python apps/app.py --checkpoint gpvit_l1.pth --model gpvit_l1_upernet --num-classes 150
    python apps/app.py --timm-model vit_small_patch14_reg4_dinov2 --checkpoint dinov2.pth   # any timm ViT:
                                                            # PCA of patch features, clicks, class-token maps
    python apps/app.py --host 0.0.0.0 --port 8080 --auth-file users.txt   # beyond this machine, with a
                                                            # login; page loading off unless --allow-load DIR

Everything computed here is a library call (``workbench.Predictor``,
``workbench.data.image.open_image``, ``workbench.viz``); the package is settings (``settings``), the
model and session store (``store``), plain handler functions (``handlers``), the Blocks (``layout``) and
the server (``serve``). Each checkpoint is loaded once and its model shared by every user. A
segmentation runs the backbone once (``Predictor.set_image``) and keeps the session (``Sessions``:
bounded, keyed by the model and the file's bytes), so a click computes only that pixel's attention row.
A detection run (``DetectionPredictor``) shows its detections drawn and listed instead; the explain tabs
apply to segmentors. A timm ViT (``ViTPredictor``) shows the PCA of its patch features and its
classifier's top five, and answers clicks, class-token maps and relevance (``vit_handlers``). Model calls (segmentations, attributions) take the model's lock one at a time,
clicks none; the Gradio queue bounds how many requests run at once. API for ``gradio_client``:
``/label_map`` (image file -> labels), ``/label_png`` (the same labels as an inline PNG),
``/attention`` (image file, y, x, layer, head -> that pixel's attention, a distribution over the image's
pixels), ``/attention_png`` (the same map as an inline 16-bit grey PNG scaled to its largest weight,
and that scale; ``apps.handlers``) and ``/detections`` (image file, score threshold -> label, score and
box of each).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root, not apps/, on the import path
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from apps.serve import main

if __name__ == "__main__":
    main()
