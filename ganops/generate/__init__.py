"""Batch generation from a trained generator: ``ganops generate``.

Layers (each its own module):
  options.py   what the model is (ModelInfo); what was asked is the GANGenerationSpec
  latents.py   z for every image index, reproducible from the seed whatever the sharding;
               the shard plan, computed on demand (nothing is listed per image or shard)
  limits.py    what one process may hold at once for this model; the flag that asks too much
  core.py      one shard: G forward in batches, best-of-K ranking by the D saved with G
  writer.py    one shard's files (PNG and/or .npz) with checksums; preview; manifest last,
               streamed to disk as the shards come back
  source.py    the generator, discriminator and training spec behind a run id or model URI
  job.py       plan shards, place the Ray workers (or refuse), run the shards in-process or
               on the workers, record the MLflow run
"""
