"""RL adapters that plug into verl and run the same way in the local engine.

spar          SPAR's math (gamma_j, step-penalised advantages) and verl's "spar" estimator
rewards       the verl `compute_score` of the three experts, routed by data_source
agent_loop    the "m3_consultation" and "m3_single_turn" verl agent loops; `build_agent_loop`
verl_plugin   registers the above in every process that imports verl (entry point)
verl_config   compose, validate and launch our verl jobs on top of verl's own config
engine        the local engine: one CPU process standing in for verl + vLLM
local_server  the HF-backed generation server verl's agent loops call on CPU
"""
