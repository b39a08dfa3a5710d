"""Stages that add columns to rows: deita complexity and quality, rewards and judges, Magpie tags, IFD and
embeddings. May import pipeline.core and pipeline.engines."""
