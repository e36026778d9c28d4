"""Discovery to shards: the build run, its stages (extract and render per batch, write per
shard), the worker pool and its process tuning. Imports every wing below it; no wing imports
build."""
