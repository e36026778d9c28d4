"""Scoring systems on the rows of an MMRS split: mask and answer metrics, the `prior`
reference, and the reports (NumPy only; the systems that need torch live beside it)."""
