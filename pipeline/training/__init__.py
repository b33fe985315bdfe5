"""Training (Ray Train, or in-process for one CPU worker): the small tokenizer, the GLVC latent codec
(stages 1 and 2), the GVC flow model."""
