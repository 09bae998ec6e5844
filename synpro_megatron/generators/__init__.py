"""Generators: prompt templates, generation backends (vLLM on GPU, transformers on CPU), chunking of
long sources and the clean-ups of their outputs; the synthesis job that uses them is
`synpro_megatron.synthesis`. Heavy modules (torch, transformers, vLLM) are imported only when a
backend is built."""
from synpro_megatron.generators.backends import (DEFAULT_PRODUCTION_GENERATOR, GenerationBackend, GeneratorLoadError,
                                                 HFBackend, VLLMBackend, make_backend, resolve_generator_path,
                                                 validate_generator_dir)
from synpro_megatron.generators.chunking import chunk_source, join_outputs, piece_token_budget
from synpro_megatron.generators.prompts import (ENTRY_KINDS, KINDS, MAX_ENTRIES, REFORMAT_HEADING, REPHRASE_LEAD,
                                                ReformatEntry, parse_output, parse_reformat, parse_rephrase,
                                                render_messages)

__all__ = [
    "DEFAULT_PRODUCTION_GENERATOR", "GenerationBackend", "GeneratorLoadError", "HFBackend", "VLLMBackend",
    "make_backend", "resolve_generator_path", "validate_generator_dir", "chunk_source", "join_outputs",
    "piece_token_budget", "ENTRY_KINDS", "KINDS", "MAX_ENTRIES", "REFORMAT_HEADING", "REPHRASE_LEAD",
    "ReformatEntry", "parse_output", "parse_reformat", "parse_rephrase", "render_messages",
]
