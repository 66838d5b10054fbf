"""Functional JAX Qwen2 / Qwen3: config, weights, forward, logprobs, sampling, HF import/export."""
from models.config import ConfigError, ModelConfig
from models.hf_io import CheckpointError, load_hf, save_hf
from models.logprobs import chunked_logprobs, token_logprobs
from models.sampler import Completion, SamplingParams, generate, generate_batch
from models.sharding import make_mesh, param_shardings
from models.transformer import forward
from models.weights import init_params

__all__ = ["CheckpointError", "ConfigError", "ModelConfig", "forward", "init_params", "load_hf", "make_mesh",
           "param_shardings", "save_hf", "chunked_logprobs", "token_logprobs",
           "Completion", "SamplingParams", "generate", "generate_batch"]
