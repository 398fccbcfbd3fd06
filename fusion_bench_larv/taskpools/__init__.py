"""FusionBench task pools this package adds (never imported by the method).

* :mod:`~fusion_bench_larv.taskpools.clip_classification`: CLIP image classification with class
  names and templates from config (the synthetic suite, the TALL20 tasks FusionBench lacks);
* :mod:`~fusion_bench_larv.taskpools.flan_t5_glue`: FusionBench's Flan-T5 GLUE text-generation
  pool with a safe cache and an average (the paper's NLP experiment).
"""
