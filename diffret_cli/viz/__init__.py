"""Figures of a run (matplotlib, Agg backend): one module per figure."""
