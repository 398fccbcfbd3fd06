"""tinyclip_synth: an offline, procedurally generated CLIP model-merging benchmark.

- :mod:`.tasks`: the 20-task image suite (generator, class names, prompt templates, captions);
- :mod:`.model`: the tiny CLIP (tokenizer, architecture, pretraining, fine-tuning);
- :mod:`.build`: cached, resumable asset builds (``python -m fusion_bench_larv.synth build``);
- :mod:`.pools`: FusionBench model / task pools over the assets (``modelpool=tinyclip_synth8``).

See docs/benchmark.md.
"""
