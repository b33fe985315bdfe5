"""Training on Ray Train: the small tokenizer, the GLVC latent codec (stage 1), the GVC flow model."""
