"""A freshly initialised 2-layer Llama with SmolLM2's tokenizer and chat template, saved as a
normal HF generator folder: loaded and driven by our real code like any generator, but a
generation or GRPO step takes a fraction of a second. Its text is noise, so the gate drops most of
it; tests that use it check the machinery (checkpoints, ranks, shards), not the writing."""


def make_tiny_generator(out) -> str:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from synpro_megatron.generators.backends import load_generator_tokenizer
    from synpro_megatron.generators.smollm2 import smollm2_path

    tok = load_generator_tokenizer(str(smollm2_path(with_weights=False)))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)
