"""Data: data sets on disk, preprocessing, and the embedded phantom generator."""
