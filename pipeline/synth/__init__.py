"""Stages that make rows: Magpie, CodecLM and the MCTS instruction search. May import pipeline.core,
pipeline.engines and pipeline.score (searches and contrastive filtering judge with score's raters)."""
