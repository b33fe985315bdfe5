"""Entry points: `python -m jobs.archive|verify|restore|audit|train` and the `vidarc` typer CLI."""
