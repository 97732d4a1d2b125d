"""Data the stages share: where each domain's prompts come from and how they become rows.

prompts      the three domains' prompt sources (SOURCES), `domain_rows`, verl parquet rows
healthbench  HealthBench records (the official JSONL schema) from a path or URL
"""
