"""Inference: loading generators (exported, checkpoints, official DPED), enhancing whole photos or exact
tiles within a memory budget, and folders of files."""
