"""Running the grid: settings (presets, checks, views, sweeps), the run folder (storage, stages,
splits, provenance), where and how it computes (accelerator, distributed, executors) and the
runner itself.

Layers, lowest first: ``storage``, ``progress``, ``provenance``, ``accelerator``,
``distributed``; ``stage_store``, ``stages``, ``splits``; ``settings_check``, ``presets``;
``runner``; ``display``, ``doctor``, ``status``, ``sweep``, ``plan``, ``settings_view``,
``executors``. A module imports only modules of lower layers (and the contracts of
:mod:`hcibench`)."""
