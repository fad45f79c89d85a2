"""Hydra's name for sft's Optuna sweeper (``hydra.sweeper._target_: hydra_plugins.sft_optuna_sweeper.OptunaSweeper``).

Hydra only instantiates sweepers defined under the ``hydra_plugins`` namespace package, so the sweeper (all of
it in :mod:`sft.sweeper`) gets its plugin name here. Hydra finds this module by scanning ``hydra_plugins`` in a
regular install and with the checkout on ``sys.path``; an editable install's import hook hides it from that scan
(hydra#3252), so :func:`sft.sweeper.register` also registers it explicitly. Keep this module import-light: Hydra
imports every ``hydra_plugins`` module at start-up.
"""

import sft.sweeper


class OptunaSweeper(sft.sweeper.OptunaSweeper):
    __doc__ = sft.sweeper.OptunaSweeper.__doc__
