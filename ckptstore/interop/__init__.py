"""Bringing framework checkpoint files into a store and writing stored checkpoints back out."""
