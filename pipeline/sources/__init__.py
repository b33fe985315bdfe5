"""Source videos, shared by the write side and the tools (never the read side): reading them with
PyAV (`media`: probe, decode GOPs, audio), hashing them in the same read (`hashing_reader`), and
synthetic clips for training, benchmarks and tests (`synthetic`)."""
