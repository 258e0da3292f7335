"""The catalog loads, is internally consistent, keeps its sources, and rejects bad data."""

from __future__ import annotations

import copy

import pytest
from gpuinfra.catalog import Catalog, find_gpu, find_instance_type, find_model, load_catalog
from gpuinfra.catalog import _read as read_catalog_file
from gpuinfra.errors import InputError
from pydantic import ValidationError

EXPECTED_INSTANCES = {
    "p4d.24xlarge", "p4de.24xlarge", "p5.4xlarge", "p5.48xlarge", "p5e.48xlarge", "p5en.48xlarge",
    "p6-b200.48xlarge",
} | {f"g5.{s}" for s in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge", "48xlarge")} \
  | {f"g6.{s}" for s in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge", "48xlarge")} \
  | {f"g6e.{s}" for s in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge", "48xlarge")}


def _raw():
    return {
        "sources": read_catalog_file("sources.yaml")["sources"],
        "gpus": read_catalog_file("gpus.yaml")["gpus"],
        "instances": read_catalog_file("instances.yaml")["instances"],
        "models": read_catalog_file("models.yaml")["models"],
        "software": read_catalog_file("software.yaml")["software"],
        "regions": read_catalog_file("regions.yaml"),
    }


def test_catalog_covers_every_required_part():
    catalog = load_catalog()
    assert {i.name for i in catalog.instances} == EXPECTED_INSTANCES
    gpus = {g.name for g in catalog.gpus}
    assert {"A100-SXM4-40GB", "A100-SXM4-80GB", "H100-SXM-80GB", "H100-PCIe-80GB", "H200-SXM-141GB", "B200",
            "L40S", "A10G", "L4", "RTX-4090", "Jetson-AGX-Orin-64GB"} == gpus
    assert {m.slug for m in catalog.models} == {
        "deepseek-r1", "deepseek-v3", "deepseek-r1-distill-qwen-1.5b", "deepseek-r1-distill-qwen-7b",
        "deepseek-r1-distill-llama-8b", "deepseek-r1-distill-qwen-14b", "deepseek-r1-distill-qwen-32b",
        "deepseek-r1-distill-llama-70b",
    }


def test_every_record_keeps_its_sources_and_every_price_its_date_and_region():
    catalog = load_catalog()
    for inst in catalog.instances:
        assert {"spec", "nvme_split"} <= set(inst.sources)
        assert inst.price.region == "us-east-1" and inst.price.date.isoformat() == "2026-07-20"
        assert inst.price.usd_per_hour is not None or inst.price.note
    for gpu in catalog.gpus:
        assert {"spec", "memory_gib", "compute_capability"} <= set(gpu.sources)


def test_known_figures_are_the_sourced_ones():
    p5 = find_instance_type("p5.48xlarge")
    assert (p5.gpus, p5.network.cards, p5.efa.max_interfaces, p5.price.usd_per_hour) == (8, 32, 32, 55.04)
    assert find_instance_type("p5en.48xlarge").efa.max_interfaces == 16
    assert find_instance_type("p5e.48xlarge").price.usd_per_hour is None  # not in the us-east-1 list
    assert find_gpu("h200").memory_gib == 141.0 and find_gpu("a10g").memory_gib == 22.35
    assert not find_gpu("a100").fp8_tensor_cores and find_gpu("l4").fp8_tensor_cores
    assert find_gpu("orin").unified_memory


def test_models_are_found_by_slug_name_or_hf_repo_case_insensitively():
    assert find_model("DEEPSEEK-AI/deepseek-r1-distill-llama-70b").slug == "deepseek-r1-distill-llama-70b"
    assert find_model("DeepSeek-R1").slug == "deepseek-r1"


def test_unknown_names_suggest_the_closest():
    with pytest.raises(InputError, match="did you mean deepseek-r1-distill-llama-70b"):
        find_model("deepseek-r1-distil-llama-70b")
    with pytest.raises(InputError, match="did you mean p5.48xlarge"):
        find_instance_type("p5.48xlarg")
    with pytest.raises(InputError, match="unknown GPU 'h1000'"):
        find_gpu("h1000")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["instances"][0].update(gpu="A100-SXM9"), "GPU 'A100-SXM9' is not in gpus.yaml"),
        (lambda d: d["instances"][0]["sources"].update(spec="S999"), "source 'S999' for spec"),
        (lambda d: d["instances"][0].update(gpu_memory_gib=41.0), "disagrees with A100-SXM4-40GB"),
        (lambda d: d["gpus"][1]["aliases"].append("a100"), "duplicate GPU names or aliases: a100"),
        (lambda d: d["instances"][0].update(typo_field=1), "Extra inputs are not permitted"),
        (lambda d: d["instances"][0]["efa"].update(max_interfaces=0), "efa.supported and efa.max_interfaces"),
        (lambda d: d["gpus"][0].update(fp8_dense_tflops=100.0), "fp8_tensor_cores and fp8_dense_tflops disagree"),
        (lambda d: d["software"]["nvidia_driver"].update(branch="570", version="570.20"),
         "older than CUDA 12.8 needs \\(570.26\\)"),
        (lambda d: d["software"]["nvidia_driver"].update(version="570.172.08"), "is not on branch 580"),
        (lambda d: d["software"]["cuda"].update(version="12.7"), "cuda 12.7 is not in cuda_min_driver"),
        (lambda d: d["software"]["efa_installer"].update(sha256="abc"), "String should match pattern"),
        (lambda d: d["software"]["sources"].update(cuda="S99"), "source 'S99' for cuda"),
    ],
)
def test_inconsistent_catalog_data_is_rejected(mutate, message):
    data = copy.deepcopy(_raw())
    mutate(data)
    with pytest.raises(ValidationError, match=message):
        Catalog(**data)


def test_software_stack_is_one_compatible_set():
    software = load_catalog().software
    assert software.nvidia_driver.version.startswith(software.nvidia_driver.branch + ".")
    needed = software.cuda_min_driver[software.cuda.version]
    assert tuple(map(int, software.nvidia_driver.version.split("."))) >= tuple(map(int, needed.split(".")))
    assert set(software.nvidia_repository.distributions) >= {"debian-12", "ubuntu-22.04", "ubuntu-24.04"}
