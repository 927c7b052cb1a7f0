"""fastload inside the frameworks that run the training loop.

* :mod:`fastload.integrations.accelerate`: ``use_fastload(accelerator)``, after which
  ``accelerator.prepare`` keeps fastload loaders (sharded, on the accelerator's device,
  saved and restored by ``save_state``/``load_state``).
* :mod:`fastload.integrations.transformers`: ``FastloadTrainer``, a Hugging Face
  ``Trainer`` whose loaders are fastload's and that resumes mid-epoch exactly.

Lightning needs no integration: fastload loaders and samplers follow the protocols its
sampler injection uses (see the README). Each module imports its framework only when
imported itself.
"""
