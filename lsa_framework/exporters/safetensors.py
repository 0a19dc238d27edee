"""The ``safetensors`` exporter (the default): ``model/``, the pruned model with its tokenizer.

    lsaf run ... --output out/lsa-70            # out/lsa-70/model loads with AutoModelForCausalLM.from_pretrained

Pruned weights are stored as dense zeros. With ``--offload disk`` the shards written while pruning are
linked in, not rewritten.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from lsa_framework.hookspecs import hookimpl
from lsa_framework.types import ExportContext, PluginOptions


class SafetensorsExporter:
    name: ClassVar[str] = "safetensors"
    folder: ClassVar[str] = "model"
    Options: ClassVar[type[PluginOptions]] = PluginOptions

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else PluginOptions()

    def export(self, context: ExportContext, folder: Path) -> None:
        context.save_model(folder)
        context.tokenizer.save_pretrained(folder)


@hookimpl
def lsaf_register_exporters(register: Any) -> None:
    register(SafetensorsExporter)
