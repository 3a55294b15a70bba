"""Batch generation from a trained generator: ``ganops generate``.

Layers (each its own module):
  options.py   what the model is (ModelInfo); what was asked is the GANGenerationSpec
  latents.py   z for every image index, reproducible from the seed whatever the sharding
  core.py      one shard: G forward in batches, best-of-K ranking by the D saved with G
  writer.py    one shard's files (PNG and/or .npz) with checksums; preview; manifest last
  source.py    the generator, discriminator and training spec behind a run id or model URI
  job.py       plan shards, run them in-process or on Ray workers, record the MLflow run
"""
