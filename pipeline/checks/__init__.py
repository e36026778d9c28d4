"""What `mmrs validate` checks: one shard's rows, and a whole output folder. Imports io,
geometry and qa."""
