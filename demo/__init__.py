"""The end-to-end demo: an action, like the stages, so it lives beside them and not in `m3/`.

`demo.run` runs every step as its own command (`python -m stage1_expert_rl ...`), exactly what a
user types, and `demo.report` turns the steps' one-line summaries and the registry's lineage into
the report. Neither is library code another package builds on: `m3/` never imports a stage or the
demo, and no stage imports the demo.

    make demo                 # python -m demo
    python -m demo.report outputs/demo
"""
