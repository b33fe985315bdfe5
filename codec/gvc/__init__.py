"""GVC: zero-shot codebook coding through a stochastic rectified-flow video model."""
