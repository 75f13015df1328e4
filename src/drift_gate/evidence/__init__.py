"""Evidence: CAMs, drift and localisation metrics, classification metrics. Pure: no files."""
