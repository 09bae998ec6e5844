"""Generator RL: TRL's GRPOTrainer with the SynPro rewards (`train_generator`), and the CLI
(`train-generator`)."""
from synpro_megatron.rl.grpo import GRPORunConfig, generator_output_dir, read_reward_log, train_generator

__all__ = ["GRPORunConfig", "generator_output_dir", "read_reward_log", "train_generator"]
