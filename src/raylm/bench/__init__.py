"""`raylm bench`: vLLM's own serving benchmark (`vllm bench serve`'s datasets, request
functions and metrics), run in this process against any OpenAI-compatible endpoint: raylm,
plain vLLM or another server. raylm adds what an operator comparing two endpoints needs:
the tokenizer found without a model hub (target.py), concurrency sweeps and A-B-B-A rounds
(runs.py), ratios with their spread (compare.py) and PNG plots (plots.py)."""
