"""Stage 2: offline distillation of the experts into one student with Clip-Forward-KL."""
