"""What a build publishes beside its rows: data card, statistics, plots, the Hub upload.
Imports geometry and sources."""
