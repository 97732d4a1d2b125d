"""SCAN-bench-style OSCE evaluation: inquiry, lab and diagnosis stations against a simulated patient."""
