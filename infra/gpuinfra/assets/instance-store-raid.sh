#!/usr/bin/env bash
# gpuinfra-instance-store-raid: assemble local NVMe (EC2 instance store or given devices) into one RAID0 array,
# format it with XFS aligned to the stripe, and mount it. Runs at every boot from a systemd unit, because
# instance-store disks come back empty after a stop/start (and with the old array after a reboot).
#
# Safety rule: a disk is used only when it is empty (no filesystem, partition table or RAID signature) or
# carries this tool's own array. Anything else stops the run before a single disk is written, unless that
# exact device is listed in GPUINFRA_RAID_FORCE. Shared by the EC2 user data and the Ansible nvme_raid role.
#
# Settings (environment, normally from /etc/default/gpuinfra-instance-store-raid):
#   GPUINFRA_RAID_DEVICES  space-separated devices; default: every NVMe whose model is EC2 instance storage
#   GPUINFRA_RAID_MODEL    model string to discover by (default "Amazon EC2 NVMe Instance Storage")
#   GPUINFRA_RAID_MOUNT    mount point (default /mnt/nvme)
#   GPUINFRA_RAID_NAME     md array name (default gpuinfra-nvme)
#   GPUINFRA_RAID_LABEL    XFS label, at most 12 characters (default gpuinfranvme)
#   GPUINFRA_RAID_FORCE    devices that may be overwritten although they hold a foreign signature
#   GPUINFRA_RAID_CHUNK_KIB  RAID0 chunk size (default 512)
set -euo pipefail

model=${GPUINFRA_RAID_MODEL:-Amazon EC2 NVMe Instance Storage}
mount_point=${GPUINFRA_RAID_MOUNT:-/mnt/nvme}
name=${GPUINFRA_RAID_NAME:-gpuinfra-nvme}
label=${GPUINFRA_RAID_LABEL:-gpuinfranvme}
chunk_kib=${GPUINFRA_RAID_CHUNK_KIB:-512}
read -r -a forced <<<"${GPUINFRA_RAID_FORCE:-}"
array=/dev/md/$name

log() { echo "instance-store-raid: $*" >&2; }
die() { log "$*"; exit 1; }

discover() {
  if [[ -n "${GPUINFRA_RAID_DEVICES:-}" ]]; then
    echo "$GPUINFRA_RAID_DEVICES"
    return
  fi
  local found=() dev
  for dev in /sys/block/nvme*n*; do
    [[ -e "$dev/device/model" ]] || continue
    [[ "$(basename "$dev")" =~ p[0-9]+$ ]] && continue
    if [[ "$(sed 's/[[:space:]]*$//' "$dev/device/model")" == "$model" ]]; then
      found+=("/dev/$(basename "$dev")")
    fi
  done
  echo "${found[*]:-}"
}

is_forced() {
  local dev=$1 f
  for f in "${forced[@]:-}"; do [[ -n "$f" && "$(readlink -f "$f")" == "$(readlink -f "$dev")" ]] && return 0; done
  return 1
}

# Prints: empty | ours | foreign:<what>
classify() {
  local dev=$1 type fs_label parts
  # Only partitions count: an assembled array shows up under its members too (TYPE raid0), and that is ours.
  parts=$(lsblk -nro NAME,TYPE "$dev" | awk '$2 == "part" {print $1; exit}' || true)
  type=$(blkid -p -s TYPE -o value "$dev" 2>/dev/null || true)
  fs_label=$(blkid -p -s LABEL -o value "$dev" 2>/dev/null || true)
  if [[ -z "$type" ]] && blkid -p -s PTTYPE -o value "$dev" >/dev/null 2>&1; then
    echo "foreign:partition table $(blkid -p -s PTTYPE -o value "$dev")"
  elif [[ -n "$parts" ]]; then
    echo "foreign:partition $parts"
  elif [[ -z "$type" ]]; then
    echo empty
  elif [[ "$type" == linux_raid_member ]] && mdadm --examine "$dev" 2>/dev/null | grep -Eq "Name : ([^ ]*:)?$name( |$)"; then
    echo ours
  elif [[ "$type" == xfs && "$fs_label" == "$label" ]]; then
    echo ours
  else
    echo "foreign:$type${fs_label:+ (label $fs_label)}"
  fi
}

mount_array() {
  local target=$1
  mkdir -p "$mount_point"
  if mountpoint -q "$mount_point"; then
    local source
    source=$(findmnt -n -o SOURCE --target "$mount_point")
    if [[ "$(readlink -f "$source")" != "$(readlink -f "$target")" ]]; then
      die "$mount_point already holds $source; refusing to mount $target over it"
    fi
    log "$mount_point already mounted"
    return
  fi
  # systemd may mount the fstab entry (nofail) the moment the new filesystem appears: losing that race is fine.
  if ! mount -o noatime "$target" "$mount_point"; then
    mountpoint -q "$mount_point" && [[ "$(readlink -f "$(findmnt -n -o SOURCE --target "$mount_point")")" == \
      "$(readlink -f "$target")" ]] || die "could not mount $target on $mount_point"
    log "$mount_point already mounted"
    return
  fi
  log "mounted $target on $mount_point"
}

# An array assembled by udev at boot may already hold the disks, under our name or another md node.
active_array() {
  local holder
  holder=$(ls "/sys/block/$(basename "$(readlink -f "$1")")/holders" 2>/dev/null | head -n 1 || true)
  [[ -n "$holder" ]] && echo "/dev/$holder"
}

read -r -a devices <<<"$(discover)"
if (( ${#devices[@]} == 0 )); then
  log "no instance-store NVMe devices found (model \"$model\"); nothing to do"
  exit 0
fi

foreign=() ours=0 empty=0
for dev in "${devices[@]}"; do
  [[ -b "$dev" ]] || die "$dev is not a block device"
  state=$(classify "$dev")
  case "$state" in
    ours) ours=$((ours + 1)) ;;
    empty) empty=$((empty + 1)) ;;
    foreign:*)
      if is_forced "$dev"; then
        log "$dev holds ${state#foreign:}; overwriting because it is in GPUINFRA_RAID_FORCE"
        empty=$((empty + 1))
      else
        foreign+=("$dev (${state#foreign:})")
      fi ;;
  esac
done
if (( ${#foreign[@]} )); then
  die "refusing to touch disks holding data this tool did not create: ${foreign[*]}; list a device in GPUINFRA_RAID_FORCE to allow overwriting it"
fi

if (( ${#devices[@]} == 1 )); then
  dev=${devices[0]}
  if (( ours == 0 )); then
    is_forced "$dev" && wipefs -a "$dev" >/dev/null
    mkfs.xfs -q -f -L "$label" "$dev"
    log "formatted $dev"
  fi
  mount_array "$dev"
  exit 0
fi

if (( ours == ${#devices[@]} )); then
  running=$(active_array "${devices[0]}" || true)
  if [[ -n "$running" ]]; then
    array=$running
  else
    mdadm --assemble "$array" "${devices[@]}"
    log "assembled $array from ${devices[*]}"
  fi
else
  # Some or all members came back empty (stop/start wipes instance store): the old array cannot be
  # reassembled, so a fresh one is built from the same disks.
  running=$(active_array "${devices[0]}" || true)
  if [[ -n "$running" ]]; then mdadm --stop "$running"; fi
  for dev in "${devices[@]}"; do wipefs -a "$dev" >/dev/null; done
  mdadm --create "$array" --run --level=0 --chunk="$chunk_kib" --raid-devices="${#devices[@]}" \
    --name="$name" --homehost=any "${devices[@]}"
  udevadm settle || true
  mkfs.xfs -q -f -L "$label" -d su="${chunk_kib}k",sw="${#devices[@]}" "$array"
  log "created RAID0 $array over ${devices[*]}"
fi
if [[ -z "$(blkid -p -s TYPE -o value "$array" 2>/dev/null || true)" ]]; then
  mkfs.xfs -q -f -L "$label" -d su="${chunk_kib}k",sw="${#devices[@]}" "$array"
  log "formatted $array"
fi
mount_array "$array"
