"""What each report figure shows, chosen without matplotlib: one module per figure family, each with a
``_get_<figure>_info`` function returning a small named tuple of the points, values and labels to draw.

The drawing functions in :mod:`hgc_tune.report._figures` turn these into matplotlib figures, as Optuna's
``optuna.visualization.matplotlib`` draws what ``optuna.visualization._<plot>._get_<plot>_info`` chose.
Nothing here imports matplotlib, so the choice of data is tested on its own.
"""
