"""Experiments: what to run for each table and figure, and the main job."""
