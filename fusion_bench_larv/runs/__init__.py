"""Run infrastructure, for the method's users and the paper lab alike (never imported by the method).

* :mod:`~fusion_bench_larv.runs.sweep`: the Hydra callback of every ``fusion_bench`` call through
  this package's primary config (end-of-run summary, one log dir per multirun job, the sweep
  table) and the ``larv.job_log_dir`` resolver;
* :mod:`~fusion_bench_larv.runs.summary`: the sweep table, its CSV and Markdown, its heatmap;
* :mod:`~fusion_bench_larv.runs.reports`: the one results model: a job folder read into a
  :class:`~fusion_bench_larv.runs.reports.Job`, and the one CSV writer;
* :mod:`~fusion_bench_larv.runs.programs`: the resumable ``fusion_bench`` program;
* :mod:`~fusion_bench_larv.runs.heatmap`: the grid heatmap (the paper's Figure 4).
"""
