"""Real test hosts built on this machine: debootstrap'd Debian under systemd-nspawn (one network namespace
each, reached over SSH) and a QEMU guest with emulated NVMe, plus the local package repositories that stand in
for the Debian mirror and NVIDIA's CUDA repository (the hosts have no route to the internet)."""
