"""The dual-model family of the CODA paper, as one plugin: a self-supervised feature extractor
(FE) and a task model trained on its frozen output, optionally with the FE adapted to each
unlabelled target.

    step 1  FE trained without labels on the source      (DINO, DINO + cross-batch pairs, MAE)
    step 2  task model trained with source labels on the frozen FE
    step 3  FE adapted to the target without its labels  (ODA, CODA, ODA-MAE; TTT per image;
            ODA and CODA with the FE's outputs aligned to the source's: oda-align, coda-align)

Modules: ``settings`` (the ``dino``, ``mae``, ``task`` and ``adapt`` sections per preset),
``steps`` (the three steps with DINO), ``mae_steps`` (with MAE), ``ttt`` (test-time training),
``adaptation`` (what step 3 adapts, its label-free diagnostics, alignment to the source),
``dino_methods`` and ``mae_methods`` (the registered methods), ``pretrain`` (``hcibench
pretrain``: an FE pretrained on a corpus disjoint from a run's sources, for ``--pretrained``).
"""

import hcibench

from .dino_methods import CODA, ODA, CODAAligned, DualCB, DualDino, ODAAligned
from .mae_methods import ODAMAE, TTT, DualMAE
from .pretrain import pretrain_command

METHODS = (DualDino, DualCB, ODA, CODA, ODAAligned, CODAAligned, DualMAE, ODAMAE, TTT)


@hcibench.hookimpl
def register_methods(register):
    for method in METHODS:
        register(method)


@hcibench.hookimpl
def register_commands(cli):
    cli.add_command(pretrain_command)
