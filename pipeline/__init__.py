"""Dataset-scale archive workflow on Ray: discover, plan GOPs, encode, write, verify, restore, audit."""
