"""Memory (issue 12; docs/memory.md): `memory` spans in the ledger, encrypted, searchable by
text and by vector, forgettable for good, exportable.

    text.py      pure: words -> keyed term hashes (the blind text index), previews, tokens
    embedder.py  the default local embedder (wordllama, shipped in its wheel: no download)
    service.py   upsert, get, search, forget, export, expire, reindex, status (stage 0 only)

Layer: above vault/ and ledger/, below boot/ (the memory kernels reach it through ctx), side
by side with llm/ (provider embeddings come in as vectors, computed by the kernel through
ctx.embed).
"""
