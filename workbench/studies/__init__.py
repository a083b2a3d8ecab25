"""Measurements over models and data sets: per-image review, family summaries, data-set analyses."""
