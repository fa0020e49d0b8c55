"""What is specific to a model's forward pass: envoys, the interleaver, tracer, scan."""
