"""Gating: thresholds, audit sets and baselines, the gate run, rules and reports."""
