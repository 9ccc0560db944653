"""Export targets: builders, quantization and calibration, parity and the timing harness."""
