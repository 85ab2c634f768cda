"""The hooks a plugin implements. Each receives a callable or object and registers into it.

A plugin is any module or object exposed under the ``hcibench`` entry-point group whose functions
are decorated with ``hcibench.hookimpl``. It implements only the hooks it needs::

    import hcibench

    @hcibench.hookimpl
    def register_methods(register):
        register(MyMethod)
"""

import pluggy

hookspec = pluggy.HookspecMarker("hcibench")
hookimpl = pluggy.HookimplMarker("hcibench")


@hookspec
def register_methods(register):
    """Register method classes: ``register(cls)`` for each subclass of ``hcibench.Method``.

    The class attributes ``name`` (the user-facing name, e.g. ``"my-method"``) and ``description``
    (one line, shown by ``hcibench list methods``) are required.
    """


@hookspec
def register_datasets(register):
    """Register dataset classes: ``register(cls)`` for each subclass of ``hcibench.Dataset``.

    ``name`` and ``description`` class attributes are required, as for methods.
    """


@hookspec
def register_evaluators(register):
    """Register evaluators: ``register(cls)`` for each subclass of ``hcibench.Evaluator``.

    An evaluator turns the predictions of one grid cell into named metrics.
    """


@hookspec
def register_commands(cli):
    """Add click commands or groups to the ``hcibench`` command line: ``cli.add_command(cmd)``.

    Dataset utilities go into the core's ``data`` group: ``cli.commands["data"].add_command(cmd)``.
    """
