"""`egmf-bench`: measure what the two-stage design buys, against the ways people do it today (issue 6).

Six benchmarks, one function each, each returning a dict:
  1 bench_cache_vs_media       one training epoch reading the cache against the same epoch decoding and encoding
                               every clip of every batch (demo corpus)
  2 bench_storage              the cache against an MMSA-style float32 pickle and plain .npy files (synthetic
                               MOSEI-sized features): open + first batch, full scan, size on disk, peak memory
  3 bench_extraction_speed     egmf-extract against a naive per-clip loop, same encoders and clips
  4 bench_extraction_memory    peak RSS of egmf-extract for few and for ten times more clips
  5 bench_input_pipeline       the share of training step time spent waiting for data
  6 bench_step_time            a stage-two step's phases, padding and compute bound, before and after removing
                               its waste (random-batch padding, the CPU's fused attention kernel)
A result holds its checks (value, target, passed), the raw measurements, and, where a target is missed, what
bounds it. Ratios carry over between machines; absolute times stay in the JSON for reference. Memory is measured
in fresh subprocesses, so each number is one reader's or one run's alone.

Modules: common (sizes, results, probes, the shared scratch data), training (1, 5), storage (2), extraction (3, 4),
steptime (6), report (the run, the JSON, the README table), cli (the typer app). Heavy libraries are imported inside
the functions that use them, and this package imports none of its modules: the memory probes run in fresh
subprocesses that should load only what they measure.
"""
