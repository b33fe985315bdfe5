"""The benchmarks behind `vidarc bench` (installed with the package, unlike the standalone scripts in
the repository's `bench/`): codec alone vs the whole pipeline (`throughput`), one codec's encode and
decode speed (`codec_speed`), the archive job against a plain ffmpeg loop (`ffmpeg_loop`), what each
quality metric costs (`metric_costs`) and the GPU goals (`gpu_goals`). They run the archive job, so they
sit with the write side's users in the layering (`layers.toml`)."""
