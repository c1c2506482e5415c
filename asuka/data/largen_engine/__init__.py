"""The LAR-Gen data engine: image folder -> tags -> boxes -> box filters -> masks -> mask filters -> captions ->
quadruplets (``asuka.data.quadruplets``). Stages are pluggable (``stages.build_stages``): the real models through
transformers classes by hub id or local folder, or the deterministic colour-key stand-ins of the shipped samples."""
