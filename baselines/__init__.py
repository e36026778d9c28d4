"""Models trained and scored on MMRS builds; they import the pipeline, never the reverse."""
