"""LLM rewriting: the client, its answer cache, the paraphrase stage, template expansion and
the guard that re-checks every text against the facts. Imports geometry, qa and shards."""
