"""`synpro synthesize`: rewrite the organic pool with a trained generator into a synthetic round.

Layered along the job's parts (each importable alone):
  config.py   SynthesisConfig (every setting of one job)
  sources.py  which documents: the run's prepared organic pool (held-out excluded), selection by loss
  journal.py  the per-rank resume journal (append-only JSONL, torn tail repaired)
  rewrite.py  one batch: chunk, prompt, sample, clean, gate, choose -> journal records
  job.py      the job: rank share, resume, finalize into KIND.{bin,idx} + provenance + manifest
  cli.py      the `synpro synthesize` subcommand
"""
