"""The model registry: every model module's entries in one table, and building a model by name.

Each model module declares its entries as ``MODELS: dict[name, ModelSpec]`` (``modeling_finetune.py``: the ViTs;
``modeling_finetune_llama.py``: ViT + frozen LLM block). This module imports them all, so the import graph has no
cycle (modeling_finetune <- modeling_finetune_llama <- models), and callers ask ``model_spec(name)`` what a model
holds instead of reading its name.
"""
from __future__ import annotations

import torch.nn as nn

import modeling_finetune
import modeling_finetune_llama
from modeling_finetune import ModelSpec

# Options only the models with an LLM block take; None means "not given".
LLAMA_OPTIONS = ("llama_path", "llama_layer", "llama_dtype", "llama_config")


def collect(*tables: dict[str, ModelSpec]) -> dict[str, ModelSpec]:
    """Merge the modules' tables; a name declared twice is an error naming it."""
    registry: dict[str, ModelSpec] = {}
    for table in tables:
        for name, spec in table.items():
            if name in registry:
                raise ValueError(f"model {name!r} is declared by two model modules")
            registry[name] = spec
    return registry


REGISTRY = collect(modeling_finetune.MODELS, modeling_finetune_llama.MODELS)


def list_models() -> list[str]:
    """Every model name create_model knows."""
    return sorted(REGISTRY)


def model_spec(name: str) -> ModelSpec:
    """The registry entry of ``name``; ValueError listing the known names otherwise."""
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    return REGISTRY[name]


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a model by name with VideoMAE's keyword arguments (num_classes, all_frames, img_size, ...) and, for the
    models with an LLM block, ``LLAMA_OPTIONS``. Callers may always pass those options: None means not given, and a
    value given to a model without an LLM block is an error."""
    spec = model_spec(name)
    if not spec.has_llama:
        given = [k for k in LLAMA_OPTIONS if kwargs.pop(k, None) is not None]
        if given:
            raise ValueError(f"{name} has no LLaMA block: {', '.join(given)} apply only to "
                             f"{', '.join(n for n in list_models() if REGISTRY[n].has_llama)}")
    return spec.build(**kwargs)
