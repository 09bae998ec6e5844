"""Every setting of one synthesis job."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from synpro_megatron.rewards.faithfulness import FaithfulnessConfig


@dataclass
class SynthesisConfig:
    kind: str
    run_dir: str  # the run root; outputs go to RUN_DIR/synthetic/round_K (see synpro_megatron.rundir)
    round: int = 1
    generator: Optional[str] = None  # folder; None = RUN_DIR/rounds/round_K/generators/KIND if trained, else SmolLM2
    source_jsonl: Optional[str] = None  # None: the run's prepared organic pool, else the packaged sample
    organic: Optional[str] = None  # prepared organic prefix (default RUN_DIR/data/organic)
    select: str = "all"  # all | top-loss:FRACTION
    doc_losses: Optional[str] = None  # .npy aligned with the source pool, or jsonl {"id", "loss"}
    limit: Optional[int] = None
    backend: str = "auto"  # auto | hf | vllm
    # source documents per journal batch = per generation call. None: 1024 on a GPU with vLLM (the
    # engine schedules thousands of prompts at once), 16 otherwise (transformers, or vLLM on CPU)
    batch_size: Optional[int] = None
    max_new_tokens: int = 1024
    max_source_tokens: Optional[int] = None  # extra cap on a piece (default: what the window allows)
    # sampling: None = as the generator's GRPO rollouts sampled (its synpro_generator.json), else
    # generators.backends.SamplingConfig's defaults - one setting for rollouts and synthesis
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    repetition_penalty: Optional[float] = None
    candidates: int = 1  # samples per piece; the best passing one is kept
    few_shot: Optional[bool] = None  # show a worked example first; None: as the generator was trained
    # with the example shown: forbid the example's own names and things the document does not
    # contain (formats.EXAMPLE_WORDS), so a small generator cannot answer with the example's entries
    ban_example_words: bool = True
    prefill: bool = False
    # reformat: start the answer with a first entry in the document's words (its first noun phrase as
    # the Topic, its first words as the Content): a small generator then writes about the document
    # instead of repeating the worked example's entries (rewrite.first_entry_anchor)
    anchor_first_entry: bool = False  # start the answer with the lead line / heading (the model continues it)
    clean: bool = True  # cut meta sentences, loops and cut-off tails / repeated and cut-off entries (cleanup.py)
    filter_entries: bool = True  # reformat: keep the entries that pass the gate on their own
    seed: int = 1234
    tokenizer: Optional[str] = None  # pretraining tokenizer for the .bin (default SmolLM2)
    # data parallel: this process's rank and the number of processes. None: from RANK/WORLD_SIZE or
    # SLURM_PROCID/SLURM_NTASKS (a direct `srun`/`torchrun` launch). The loop always passes both
    # (one process by default), so a synthesis inside a larger allocation never takes its ranks.
    rank: Optional[int] = None
    world_size: Optional[int] = None
    restart: bool = False
    # score batch b (gate, quality, journal) on a second thread while batch b+1 generates: the
    # engine never waits for the CPU-side models. Off: one after the other (same records either way)
    overlap_scoring: bool = True
    # processes tokenizing the round when rank 0 builds the dataset; None: one per CPU (at most 8)
    # for a round of thousands of documents, one for a small round (a pool costs more than it saves)
    finalize_workers: Optional[int] = None
    wait_timeout_s: float = 6 * 3600.0
    faithfulness: FaithfulnessConfig = field(default_factory=FaithfulnessConfig)
