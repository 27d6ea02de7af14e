"""Evaluation: caption metrics (CHAIR, recall, counts, length), POPE probes, preference accuracy, CIs."""
