"""Robot VQA: questions made from what is on the table, answers parsed and judged against it (issue #17)."""
