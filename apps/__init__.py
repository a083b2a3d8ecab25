"""The workbench's Gradio app, as a package: settings, the model and session store, plain handler
functions, the Blocks layout and the server. ``python apps/app.py`` (or ``python -m apps.app``) serves it.

Importing it sets the environment the app runs in (no analytics or telemetry, no hub, off-screen
plots) before Gradio is imported.
"""

import os

for name, value in (
    ("GRADIO_ANALYTICS_ENABLED", "False"),
    ("HF_HUB_OFFLINE", "1"),
    ("HF_HUB_DISABLE_TELEMETRY", "1"),
    ("MPLBACKEND", "Agg"),
):
    os.environ.setdefault(name, value)
