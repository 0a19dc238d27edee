"""Exporters: plugins that write parts of a run's output folder (``--export``)."""
