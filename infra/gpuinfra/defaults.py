"""The serving request's defaults, in a module of their own so the CLI builds its parser (whose help shows them)
without loading the sizing engine; `gpuinfra.sizing` uses and re-exports them."""

# vLLM defaults (S8, S10; catalog-facts.yaml meta.vllm_defaults).
DEFAULT_GPU_MEMORY_UTILIZATION = 0.90
DEFAULT_CONTEXT_TOKENS = 32768  # max_model_len when a request names none
DEFAULT_MAX_NODES = 4  # the planner's largest node count per copy unless told
