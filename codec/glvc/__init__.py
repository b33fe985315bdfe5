"""GLVC: generative latent video compression (Wan tokenizer + DCVC-style latent codec, exact entropy path).

Modules: `tokenizer` (the Wan VAE wrapper), `latent_codec` (the network), `fixed_point` (exact integer
arithmetic for everything that selects probability tables), `bitstream` (payload format), `codec`
(`GlvcCodec`, registered as "glvc"), `random_model` (random-weight model directories for tests/timing).
"""
