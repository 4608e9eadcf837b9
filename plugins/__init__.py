"""Built-in observer plugins: metrics.jsonl, the progress display and the loss plot.

Each module is a plugin like any third-party one: ``core.plugins.DEFAULT_PLUGINS`` registers it
under its module name, so a user or a test can swap one out with
``get_plugin_manager().unregister(name="loraswitch.plugins.progress")``.
"""
