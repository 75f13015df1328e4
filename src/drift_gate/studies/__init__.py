"""Studies: the paper's protocol, drift across epochs, calibration, validation and controls."""
