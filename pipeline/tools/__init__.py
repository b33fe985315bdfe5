"""Tools over the read side (never the archive job): `verify` (with `verify_progress` and
`verify_record`) and `compact` (with `compact_merge`). The audit (`pipeline.audit`) and the dataset
readers (`pipeline.dataset`) are tools too, each in its own folder."""
