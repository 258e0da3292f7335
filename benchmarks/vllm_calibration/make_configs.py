"""Write the config.json files the calibration runs load (run here, not on the device; the outputs are committed).

Each dense model's file is the catalog's `config` (infra/gpuinfra/catalog/data/models.yaml) as it stands, so the
engine and vLLM read the same shape. The MLA file is DeepSeek-V3's catalog config cut to `MLA_LAYERS` layers
(3 dense + the rest MoE), which fits one H200 in its native block-FP8 with room for a KV cache.

    python benchmarks/vllm_calibration/make_configs.py      # rewrites benchmarks/vllm_calibration/configs/*.json
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
CATALOG = HERE.parents[1] / "infra" / "gpuinfra" / "catalog" / "data" / "models.yaml"
OUT = HERE / "configs"

DENSE = {
    "qwen-1.5b": "deepseek-r1-distill-qwen-1.5b",
    "qwen-7b": "deepseek-r1-distill-qwen-7b",
    "llama-8b": "deepseek-r1-distill-llama-8b",
    "qwen-14b": "deepseek-r1-distill-qwen-14b",
    "qwen-32b": "deepseek-r1-distill-qwen-32b",
    "llama-70b": "deepseek-r1-distill-llama-70b",
}
MLA_LAYERS = 8


def main() -> None:
    models = {m["slug"]: m for m in yaml.safe_load(CATALOG.read_text())["models"]}
    OUT.mkdir(exist_ok=True)
    for name, slug in DENSE.items():
        config = dict(models[slug]["config"])
        (OUT / f"{name}.json").write_text(json.dumps(config, indent=2) + "\n")
    mla = dict(models["deepseek-v3"]["config"])
    mla["num_hidden_layers"] = MLA_LAYERS
    mla["num_nextn_predict_layers"] = 0  # vLLM does not load the MTP layer by default anyway
    (OUT / f"deepseek-v3-{MLA_LAYERS}l.json").write_text(json.dumps(mla, indent=2) + "\n")
    print("wrote", ", ".join(sorted(p.name for p in OUT.glob("*.json"))))


if __name__ == "__main__":
    main()
