"""Validation studies: ``sparsity-exp study SUITE [overrides]`` tests the paper's claims (docs/paper.md §2)
over seeds and says, with an effect size and a confidence interval, whether each one holds here.

  suite.py     conf/study/<suite>.yaml -> arms (override sets) and claims (what to compare, how to judge)
  execute.py   every arm x seed through ``sparsity-exp run -m`` (trainer.resume=auto: what is done is skipped)
  stats.py     per-seed values -> effects, t / Fieller intervals, margin and TOST tests, the four outcomes
               (stats.judge), multiplicity (stats.adjust); the rule a report prints (stats.RULE)
  report.py    study/<suite>/report.md, verdicts.csv and the figures
  plan.py      seeds per claim for 80% power (--plan) and the group-sequential stages of --seeds auto
  calibrate.py the rule's false-positive rate and power measured on the suite's controls (report section)
"""
