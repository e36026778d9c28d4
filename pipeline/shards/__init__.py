"""The Parquet shards: the writer, and the parts a stage wrote with their hashes and checks.
Imports checks and release."""
