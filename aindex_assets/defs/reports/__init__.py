"""Reports: robustness of each batch, and the on-demand index comparison."""
