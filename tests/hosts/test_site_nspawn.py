"""site.yml over real SSH against three systemd hosts (debootstrap'd Debian 12 under systemd-nspawn), with the
package sources replaced by local stand-ins: converge, rerun with changed=0, --check on a fresh host changes
nothing, and the refusals (bad checksum, wrong key, no GPU) stop before anything is changed."""

from __future__ import annotations

import re

import pytest

from tests.rigs.ansible_run import run_playbook
from tests.rigs.nspawn import written_files

pytestmark = pytest.mark.slow

SOFTWARE_HOLDS = {"nvidia-open-580", "libnccl2", "libnccl-dev", "nvidia-container-toolkit",
                  "nvidia-container-toolkit-base"}

# Every run here checks each reuse of the early probe: the role renders its probe again, the plain way, and
# fails where the early probe (playbooks/check_input.yml) asked about anything else.
VERIFY_EARLY_PROBE = ("-e", '{"gpuinfra_verify_early_probe": true}')


def run(hosts_inventory, playbook, *extra):
    hosts, inventory = hosts_inventory
    return run_playbook(playbook, inventory, *VERIFY_EARLY_PROBE, *extra, prefix=hosts.netns_exec())


def early_probe_reuses(output: str) -> dict[str, int]:
    """How many roles answered from the early probe, per host (a -v run prints each task's result)."""
    counts, host = {}, None
    for line in output.splitlines():
        if found := re.match(r"^(?:ok|changed|skipping): \[([^\]]+)\]", line):
            host = found[1]
        elif "early_probe: reused (verified)" in line and host:
            counts[host] = counts.get(host, 0) + 1
    return counts


@pytest.fixture(scope="module")
def converged(nspawn_hosts):
    hosts, _ = nspawn_hosts
    fresh = hosts.hosts[2]
    before = written_files(fresh)
    check = run(nspawn_hosts, "site.yml", "--check", "--limit", fresh.name)
    after_check = written_files(fresh)
    first = run(nspawn_hosts, "site.yml")
    second = run(nspawn_hosts, "site.yml", "-v")
    return {"check": check, "check_delta": after_check - before, "first": first, "second": second}


def test_check_mode_on_a_fresh_host_runs_and_writes_nothing(converged):
    check = converged["check"]
    assert check.returncode == 0, check.tail()
    assert converged["check_delta"] == set(), sorted(converged["check_delta"])


def test_site_converges_on_three_hosts(converged):
    first = converged["first"]
    assert first.returncode == 0, first.tail()
    assert set(first.recap) == {"h1", "h2", "h3"}
    assert all(counts["changed"] > 0 and counts["failed"] == 0 for counts in first.recap.values())


def test_second_run_changes_nothing(converged):
    second = converged["second"]
    assert second.returncode == 0, second.tail()
    assert second.changed() == {"h1": 0, "h2": 0, "h3": 0}, second.tail()


def test_the_rerun_answers_from_one_early_probe_per_host(converged):
    """On the no-op rerun the roles' probes are answered by check_input.yml's one probe per host: host_tuning,
    node_expiry when enrolled, the repository, CUDA, containerd, monitoring, and NCCL's files where no EFA
    decision is pending. Each reuse was checked against the role's own rendering (VERIFY_EARLY_PROBE)."""
    second = converged["second"]
    assert second.returncode == 0, second.tail()
    reuses = early_probe_reuses(second.output)
    assert set(reuses) == {"h1", "h2", "h3"} and min(reuses.values()) >= 5, reuses


def test_driver_and_fabric_manager_pinned_to_one_version_and_held(converged, nspawn_hosts):
    hosts, _ = nspawn_hosts
    h1, h2 = hosts.hosts[0], hosts.hosts[1]
    versions = dict(line.split() for line in hosts.ssh(
        h1, "dpkg-query -W -f '${Package} ${Version}\\n' nvidia-open-580 nvidia-fabricmanager-580"
    ).stdout.splitlines())
    # The stand-in repository also offers an older driver and a newer Fabric Manager: the pins must win.
    assert versions == {"nvidia-open-580": "580.95.05-1", "nvidia-fabricmanager-580": "580.95.05-1"}
    holds = set(hosts.ssh(h1, "apt-mark", "showhold").stdout.split())
    assert SOFTWARE_HOLDS | {"nvidia-fabricmanager-580"} <= holds
    assert "nvidia-fabricmanager-580" not in hosts.ssh(h2, "apt-mark", "showhold").stdout.split()
    pin = hosts.ssh(h1, "apt-cache", "policy", "nvidia-fabricmanager-580").stdout
    assert "Candidate: 580.95.05-1" in pin
    blacklist = hosts.ssh(h1, "cat", "/etc/apt/apt.conf.d/51gpuinfra-nvidia-hold").stdout
    assert '"linux-image-";' in blacklist and '"nvidia-";' in blacklist


def test_fabric_environment_per_kind(converged, nspawn_hosts):
    hosts, _ = nspawn_hosts
    h1, h2, h3 = hosts.hosts
    efa = hosts.ssh(h1, "cat", "/etc/gpuinfra/nccl.env").stdout
    assert "NCCL_SOCKET_IFNAME=en" in efa
    assert "LD_LIBRARY_PATH=/opt/amazon/aws-ofi-nccl/lib:/opt/amazon/efa/lib" in efa
    assert "EFA installer version: 1.41.0" in hosts.ssh(h1, "cat", "/opt/amazon/efa_installed_packages").stdout
    roce = hosts.ssh(h2, "cat", "/etc/gpuinfra/nccl.env").stdout
    assert "NCCL_IB_GID_INDEX=3" in roce and "LD_LIBRARY_PATH" not in roce
    assert hosts.ssh(h2, "dpkg-query", "-W", "rdma-core").returncode == 0
    assert "NCCL_IB_GID_INDEX" not in hosts.ssh(h3, "cat", "/etc/gpuinfra/nccl.env").stdout


def test_host_tuning_written_for_boot(converged, nspawn_hosts):
    hosts, _ = nspawn_hosts
    h1, h2, h3 = hosts.hosts
    cores = int(hosts.ssh(h1, "nproc", "--all").stdout)
    assert f"vm.nr_hugepages={110 * cores}" in hosts.ssh(h1, "cat", "/etc/sysctl.d/60-gpuinfra-hugepages.conf").stdout
    assert "vm.nr_hugepages=64" in hosts.ssh(h2, "cat", "/etc/sysctl.d/60-gpuinfra-hugepages.conf").stdout
    assert "vm.nr_hugepages" not in hosts.ssh(h3, "cat", "/etc/sysctl.d/60-gpuinfra-hugepages.conf",
                                               check=False).stdout
    assert "memlock" in hosts.ssh(h3, "cat", "/etc/security/limits.d/60-gpuinfra-memlock.conf").stdout
    assert hosts.ssh(h3, "systemctl", "show", "-p", "DefaultLimitMEMLOCK").stdout.strip() == \
        "DefaultLimitMEMLOCK=infinity"


def test_containerd_runs_with_the_nvidia_runtime(converged, nspawn_hosts):
    hosts, _ = nspawn_hosts
    for host in hosts.hosts:
        assert hosts.ssh(host, "systemctl", "is-active", "containerd").stdout.strip() == "active"
        assert "nvidia-container-runtime" in hosts.ssh(host, "cat", "/etc/containerd/config.toml").stdout


def test_efa_installer_with_a_wrong_checksum_is_never_run(converged, nspawn_hosts):
    result = run(nspawn_hosts, "fabric.yml", "--limit", "h1", "-e", "fabric_efa_installer_version=9.9.9",
                 "-e", "fabric_efa_installer_sha256=" + "0" * 64)
    assert result.returncode != 0
    assert "did not match " + "0" * 64 in result.output, result.tail()
    hosts, _ = nspawn_hosts
    assert "version: 1.41.0" in hosts.ssh(hosts.hosts[0], "cat", "/opt/amazon/efa_installed_packages").stdout


def test_repository_key_with_the_wrong_fingerprint_is_refused(converged, nspawn_hosts):
    result = run(nspawn_hosts, "drivers.yml", "--limit", "h2", "-e",
                 "nvidia_repository_key_fingerprint=EB693B3035CD5710E231E123A4B469963BF863CC")
    assert result.returncode != 0
    assert "expected EB693B3035CD5710E231E123A4B469963BF863CC; nothing was installed from it" in result.output


def test_a_host_without_gpus_is_refused_unless_declared_cpu_only(converged, nspawn_hosts):
    result = run(nspawn_hosts, "validate.yml", "--limit", "h3", "-e", "preflight_cpu_only=false")
    assert result.returncode != 0
    assert "h3 shows no NVIDIA GPU on PCI and nvidia-smi is missing or failed" in result.output, result.tail()


# Last in this file: it changes managed state on the converged hosts. Each role's probe (library/gpuinfra_state)
# decides whether its converge tasks run; a drifted item must be seen, shown by --check, repaired by the next
# run, and the run after that must change nothing.
DRIFT = {
    0: ["echo NCCL_DEBUG=INFO >> /etc/gpuinfra/nccl.env",          # a managed file edited
        "systemctl disable --now containerd",                       # a managed unit disabled and stopped
        "chmod 0600 /etc/profile.d/gpuinfra-cuda.sh",               # a managed file's mode
        "echo FI_PROVIDER=tcp >> /etc/environment"],                 # a stale line the fabric role removes
    1: ["sed -i s/=64/=32/ /etc/sysctl.d/60-gpuinfra-hugepages.conf",  # a sysctl setting changed
        "rm /etc/apt/preferences.d/gpuinfra-nvidia-driver.pref"],    # a managed file removed
}


def test_drifted_files_units_and_sysctl_are_repaired_then_left_alone(converged, nspawn_hosts):
    hosts, _ = nspawn_hosts
    for index, commands in DRIFT.items():
        hosts.ssh(hosts.hosts[index], "; ".join(commands))  # one string: the remote shell runs it
    check = run(nspawn_hosts, "site.yml", "--check")
    assert check.returncode == 0, check.tail()
    assert check.changed()["h1"] >= 4 and check.changed()["h2"] >= 2 and check.changed()["h3"] == 0, \
        check.changed_tasks()
    assert "NCCL_DEBUG" in hosts.ssh(hosts.hosts[0], "cat", "/etc/gpuinfra/nccl.env").stdout  # check mode wrote nothing
    repair = run(nspawn_hosts, "site.yml")
    assert repair.returncode == 0, repair.tail()
    assert {"fabric : Write the NCCL environment: h1", "container_runtime : Run containerd: h1",
            "host_tuning : Reserve HugePages (sysctl, applied now where the kernel allows it): h2",
            "nvidia_driver : Pin every NVIDIA driver package to exactly this version: h2"} <= \
        set(repair.changed_tasks()), repair.changed_tasks()
    h1, h2 = hosts.hosts[0], hosts.hosts[1]
    assert "NCCL_DEBUG" not in hosts.ssh(h1, "cat", "/etc/gpuinfra/nccl.env").stdout
    assert hosts.ssh(h1, "systemctl", "is-enabled", "containerd").stdout.strip() == "enabled"
    assert hosts.ssh(h1, "systemctl", "is-active", "containerd").stdout.strip() == "active"
    assert hosts.ssh(h1, "stat", "-c", "%a", "/etc/profile.d/gpuinfra-cuda.sh").stdout.strip() == "644"
    assert "FI_PROVIDER" not in hosts.ssh(h1, "cat", "/etc/environment").stdout
    assert "vm.nr_hugepages=64" in hosts.ssh(h2, "cat", "/etc/sysctl.d/60-gpuinfra-hugepages.conf").stdout
    pin = "/etc/apt/preferences.d/gpuinfra-nvidia-driver.pref"
    assert hosts.ssh(h2, "test", "-f", pin, check=False).returncode == 0
    again = run(nspawn_hosts, "site.yml")
    assert again.returncode == 0, again.tail()
    assert again.changed() == {"h1": 0, "h2": 0, "h3": 0}, again.changed_tasks()
