"""The Parquet shards: their plan by size, the writer, and the parts a stage wrote with
where each image's rows are and their checks. Imports checks and release."""
