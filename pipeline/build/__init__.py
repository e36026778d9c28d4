"""Discovery to shards: the build run, its batch stages (extract, render), the worker pool
and its process tuning. Imports every wing below it; no wing imports build."""
