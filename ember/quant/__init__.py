"""Calibrated weight quantizers (GPTQ) for the low-bit linear methods."""
