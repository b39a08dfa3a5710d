"""The record schema, run directories (atomic shards, manifest, summary, per-shard state), readers of the
user's data and secret redaction: data and disk, no models. Imports nothing else from pipeline."""
