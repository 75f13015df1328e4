"""Where drift-gate's results go beyond its own reports: MLflow runs
(:mod:`~drift_gate.integrations.tracking`) and change-control evidence bundles
(:mod:`~drift_gate.integrations.bundle`)."""
