"""kexaone.data: documents from disk (sources), cached token shards (shards), packed training batches
(packing), curricula of mixtures (curriculum) and the embedded synthetic corpus and tasks (synthetic).

Names are imported lazily so `import kexaone.data` stays cheap (no torch until a loader is built).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Document": "kexaone.data.sources",
    "SourceSpec": "kexaone.data.sources",
    "iter_documents": "kexaone.data.sources",
    "iter_tagged_documents": "kexaone.data.sources",
    "parse_mixture": "kexaone.data.sources",
    "TokenShards": "kexaone.data.shards",
    "build_token_shards": "kexaone.data.shards",
    "PackedBatches": "kexaone.data.packing",
    "iter_document_batches": "kexaone.data.packing",
    "Curriculum": "kexaone.data.curriculum",
    "CurriculumStage": "kexaone.data.curriculum",
    "CurriculumLoader": "kexaone.data.curriculum",
    "default_curriculum": "kexaone.data.curriculum",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kexaone.data' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
