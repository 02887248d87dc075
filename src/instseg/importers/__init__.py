"""Converters from checkpoints users already have into instseg checkpoints."""
