"""Questions and answers: the templates and their planner, and the fact parser that reads
text back. Imports geometry."""
