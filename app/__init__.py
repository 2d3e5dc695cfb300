"""CAV-MAE Studio web app: a Gradio view over :mod:`cavmae` and the training jobs.

Start it with ``python launch.py`` (see ``--help``). From Python::

    from app.settings import AppSettings
    from app.services import Services
    from app.ui import build_demo, launch_kwargs

    settings = AppSettings(model="demo")
    services = Services.create(settings)
    demo = build_demo(services, settings)
    demo.queue(max_size=settings.queue_size).launch(**launch_kwargs(settings))

Modules: :mod:`~app.settings` (AppSettings), :mod:`~app.services` (model cache, indexes, jobs),
:mod:`~app.jobs` (training subprocesses), :mod:`~app.handlers` (plain functions per tab),
:mod:`~app.plots` (plotly figures), :mod:`~app.ui` and :mod:`~app.tabs` (the Gradio layout).
Importing this package has no side effects and does not import gradio.
"""

__all__: list[str] = []
