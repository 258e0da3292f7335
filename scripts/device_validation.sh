#!/usr/bin/env bash
# Run preflight + node_validation with ansible_connection=local on a real GPU machine that has no internet.
# Carried along: the repository (working tree) and wheels in .work/wheels (ansible-core, pydantic, PyYAML,
# rich and their dependencies for the machine's Python). PyTorch comes from the machine itself.
# Results go to $OUT (default ./validation-out): reports/<host>.json, the raw nvidia-smi output, logs.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/validation-out}
MODEL=${MODEL:-deepseek-r1-distill-qwen-7b}
mkdir -p "$OUT/reports" "$OUT/reports-run2"
torch_python=$(command -v python3)  # the machine's Python with PyTorch, before the venv shadows it
venv=/tmp/gpuinfra-validation
python3 -m venv --system-site-packages "$venv"
"$venv/bin/pip" install -q --no-index --find-links .work/wheels ansible-core==2.19.14 pydantic==2.12.5 \
  PyYAML==6.0.3 rich==14.2.0
cat > "$venv/bin/gpuinfra" <<WRAP
#!/bin/sh
PYTHONPATH=$PWD/infra exec $venv/bin/python -m gpuinfra.cli "\$@"
WRAP
chmod +x "$venv/bin/gpuinfra"
export PATH=$venv/bin:$PATH

nvidia-smi --query-gpu=index,name,memory.total,driver_version,compute_cap,ecc.mode.current,mig.mode.current,pci.bus_id,persistence_mode,retired_pages.pending,clocks.max.sm,power.limit,temperature.gpu \
  --format=csv,noheader,nounits > "$OUT/nvidia-smi-query-gpu.csv"
nvidia-smi --query-remapped-rows=gpu_bus_id,remapped_rows.pending,remapped_rows.failure --format=csv,noheader \
  > "$OUT/nvidia-smi-remapped-rows.csv" 2>&1 || true
nvidia-smi > "$OUT/nvidia-smi.txt"
gpus=$(nvidia-smi -L | wc -l)
gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)
{ uname -a; cat /etc/os-release; python3 --version; ansible --version | head -n 1; } > "$OUT/versions.txt" 2>&1

inventory=$OUT/inventory.yml
PYTHONPATH=infra "$venv/bin/python" - "$gpu_name" "$gpus" "$MODEL" "$inventory" "$venv/bin/python" <<'PY'
import sys, yaml
from gpuinfra.catalog import find_gpu
name, count, model, path, python = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
gpu = find_gpu(name)
expected = {"gpu": gpu.name, "gpu_aliases": [gpu.name, *gpu.aliases], "gpu_count": count,
            "gpu_memory_gib": gpu.memory_gib, "memory_bandwidth_gbs": gpu.memory_bandwidth_gbs,
            "bf16_dense_tflops": gpu.bf16_dense_tflops, "nvlink_gbs_bidir": gpu.nvlink_gbs_bidir,
            "nvswitch": False}
host = {"ansible_connection": "local", "ansible_python_interpreter": python}
group_vars = {"gpuinfra_request": {"model": model, "context_tokens": 32768, "concurrency": 8},
              "gpuinfra_nodes_per_copy": 1, "gpuinfra_expected_hardware": expected}
yaml.safe_dump({"all": {"children": {"gpu_nodes": {"hosts": {"gpu-under-test": host}, "vars": group_vars}}}},
               open(path, "w"), sort_keys=False)
PY
cd ansible
set +e
ANSIBLE_CONFIG=ansible.cfg ansible-playbook -i "$inventory" playbooks/validate.yml \
  -e node_validation_report_dir="$OUT/reports" -e node_validation_min_driver=570.0 \
  -e node_validation_python="$torch_python" > "$OUT/validate-run1.log" 2>&1
echo "run1 rc=$?" | tee -a "$OUT/summary.txt"
ANSIBLE_CONFIG=ansible.cfg ansible-playbook -i "$inventory" playbooks/validate.yml \
  -e node_validation_report_dir="$OUT/reports-run2" -e node_validation_measure=false > "$OUT/validate-run2.log" 2>&1
echo "run2 (no measurements, idempotence) rc=$?" | tee -a "$OUT/summary.txt"
# A request this node cannot serve must be refused by preflight with the engine's reasons.
ANSIBLE_CONFIG=ansible.cfg ansible-playbook -i "$inventory" playbooks/validate.yml \
  -e '{"gpuinfra_request": {"model": "deepseek-r1", "context_tokens": 32768, "concurrency": 8}}' \
  -e node_validation_report_dir="$OUT/reports-run2" > "$OUT/preflight-refusal.log" 2>&1
echo "refusal rc=$?" | tee -a "$OUT/summary.txt"
cp /var/lib/gpuinfra/validation/measurements.json "$OUT/measurements.json" 2>/dev/null
# A node whose measurements cannot run must be rejected, not waved through (found on the first real run).
ANSIBLE_CONFIG=ansible.cfg ansible-playbook -i "$inventory" playbooks/validate.yml -e node_validation_python=/bin/false \
  -e node_validation_report_dir="$OUT/reports-run2" > "$OUT/validate-no-measurements.log" 2>&1
echo "no-measurements rc=$?" | tee -a "$OUT/summary.txt"
grep -E "PLAY RECAP|ok=|failed=" "$OUT"/*.log | tee -a "$OUT/summary.txt"
exit 0
