"""The paper lab: reproducing the LARV paper's experiments with the method of this package.

* :mod:`~fusion_bench_larv.paper.experiments`: one record per experiment (its jobs, swept axes,
  defaults, suites) and the grid they share (backbones, mergers, gate variants, pools);
* :mod:`~fusion_bench_larv.paper.jobs`: jobs and their grouping into Hydra sweeps;
* :mod:`~fusion_bench_larv.paper.reproduce`: ``reproduce-larv``, the commands and the CLI;
* :mod:`~fusion_bench_larv.paper.collect`, :mod:`~fusion_bench_larv.paper.tables`,
  :mod:`~fusion_bench_larv.paper.figures`: ``make-larv-tables``.

The lab imports the method (the package root) and the run infrastructure (:mod:`fusion_bench_larv.runs`,
whose resumable program runs every job); the method never imports the lab.
"""
