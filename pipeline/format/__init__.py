"""The archive format (read side): the `.vdrc` container and its header (`container`,
`container_header`), packs (`pack`), the Parquet schemas and one part's format (`schema`,
`manifest_part`), video keys (`keys`), the decode proof's digests (`digests`), and the layout of OUT
with its run records and markers (`runinfo`)."""
