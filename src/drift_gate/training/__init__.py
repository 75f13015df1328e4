"""Training: profiles, the TL and FT loops, synthetic pretraining, the pipeline."""
