"""W4 quantization: GPTQ W4A16 with llm-compressor, self-generated MoE calibration, verified reload."""
