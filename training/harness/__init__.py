"""The experiment harness both reports (and the MMRF report next) stand on.

- :mod:`.stats`: pure statistics (mean/std, pooled and paired intervals, intervals that
  respect their quantity's bounds) and the one number formatting of the reports;
- :mod:`.runfolder`: atomic writes, "compute unless a finished result with the same inputs
  exists", and output folders that a command refuses to clobber;
- :mod:`.config`: ``key=value`` overrides onto a config dataclass with one validating
  coercion, presets, the device check;
- :mod:`.data`: datasets of a world (content fingerprints), test samples, online populations;
- :mod:`.arms`: online arms from trained runs.
"""
