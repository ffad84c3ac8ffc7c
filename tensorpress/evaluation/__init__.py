"""Evaluation: perplexity, KL and top-1 against the base, greedy continuations, report.json/md/html, charts."""
