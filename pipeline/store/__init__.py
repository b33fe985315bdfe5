"""Object storage (read side): fsspec filesystems with retries, atomic writes and ranged reads
(`storage`), listing page by page (`listing`), listed keys as a compact set (`keyset`), S3 storage
classes (`storage_class`) and cold objects (`thaw`)."""
