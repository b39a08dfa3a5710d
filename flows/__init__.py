"""Prefect flows: thin tasks over pipeline.jobs steps (pipeline/ never imports Prefect)."""
