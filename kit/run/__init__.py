"""kit.run: ``kit reproduce``, the notebooks chained into one run folder.

:mod:`kit.run.pipeline` (papermill runner, report), :mod:`kit.run.state` (what a rerun keeps, redoes or
refuses), :mod:`kit.run.profiles` (the profiles of :mod:`kit.profiles`, checked against the TrainConfig and
FinetuneConfig they feed). This room sits above every other room but ``kit.cli``; nothing below imports it
(the run folder's stage names and folders are :mod:`kit.stages`, at the bottom). Importing it needs no torch.

Example:
    >>> from kit.run.pipeline import STAGES
    >>> STAGES[0]
    '01_curation'
"""
