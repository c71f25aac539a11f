"""brainfm-kit: self-supervised 3D foundation models of brain MRI, notebook first.

Rooms, top to bottom (an import only goes down; ``tests/test_rooms.py`` checks it): ``kit.cli`` (the ``kit``
command, the only entrance from the command line), ``kit.run`` (``kit reproduce``: papermill runner, report,
rerun state, checked profiles), ``kit.deploy`` (``kit predict``, MONAI bundles), ``kit.explain`` (saliency),
``kit.viz`` (figures and widgets), ``kit.finetune`` (fine-tuning tasks, evaluation, the label-efficiency study),
``kit.train`` (one training loop: pretraining and fine-tuning), ``kit.ssl`` (one module per objective),
``kit.models`` (backbones by name, heads, checkpoints, weight transfer, inference), ``kit.data`` (synthetic
cohorts, manifests, curation, cache); at the bottom, importing no room, ``kit.profiles``, ``kit.stages``,
``kit.seeds``, ``kit.tempfiles``, ``kit.tensors`` and ``kit.devices``.
"""

__version__ = "0.1.0"
