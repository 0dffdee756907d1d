"""The trainer of the embedded ``shapes`` model: a small controllable SD1.5-layout model on the shapes
benchmark (:mod:`hgc_tune.data.shapes`).

``python -m training.shapes.train --out DIR`` trains the weights (see :mod:`training.shapes.train`); they
ship in ``hgc_tune/models/weights/shapes``, where ``hgc_tune.models.load_pipeline("shapes")`` finds them.

Modules: ``train`` (command line), ``run`` (the run: settings, stages in order, checkpoints, summary),
``stages`` (one training loop per stage), ``resume`` (EMA, atomic checkpoints, stop signals), ``pool``
(pre-rendered training scenes), ``source`` (which scenes), ``architecture`` (the model configurations) and
``selfcheck`` (the acceptance bars measured after training).
"""
