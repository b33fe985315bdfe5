"""Dataset-scale archive workflow on Ray: discover, plan GOPs, encode, write, verify, restore, audit.

The folders are the layers (`layers.toml`, `docs/ARCHITECTURE.md`). The read side, Ray-free: `format`
(the archive objects, parts, keys and OUT's layout), `store` (object storage), `read` (reading
archives: the reader, the manifest, locate, restore, inspect). The tools over it: `tools` (verify,
compact), `audit`, `dataset`. The write side: `archive` (the archive job on Ray). What the write side
and the tools share: `sources` (reading source videos, synthetic clips) and `metrics`. Users of the
write side: `benchmarks` (`vidarc bench`) and `training`. `text` prints what came from outside, for
every printer.
"""
