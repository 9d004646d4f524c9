#!/usr/bin/env bash
# Regenerates disk-fat12.raw and disk-fat16.raw: a GPT disk whose only partition is an ESP holding uki.efi at
# \EFI\BOOT\BOOTX64.EFI (sgdisk with fixed GUIDs, mkfs.vfat --invariant, mtools). Run by hand; outputs committed.
set -euo pipefail
cd "$(dirname "$0")"
make_disk() { # name size_mib fat_bits
  local img=$1 size=$2 bits=$3 esp
  rm -f "$img"; truncate -s "${size}M" "$img"
  sgdisk -U 11111111-2222-3333-4444-555555555555 -n 1:2048:0 -t 1:EF00 -u 1:66666666-7777-8888-9999-aaaaaaaaaaaa \
    -c 1:ESP "$img" >/dev/null
  esp=$(mktemp); trap 'rm -f "$esp"' RETURN
  local sectors=$(( size * 2048 - 2048 - 33 ))
  truncate -s $(( sectors * 512 )) "$esp"
  mkfs.vfat --invariant -F "$bits" -s 1 -i 12345678 -n ESP "$esp" >/dev/null
  MTOOLS_SKIP_CHECK=1 mmd -i "$esp" ::/EFI ::/EFI/BOOT
  MTOOLS_SKIP_CHECK=1 mcopy -i "$esp" -m uki.efi ::/EFI/BOOT/BOOTX64.EFI
  MTOOLS_SKIP_CHECK=1 mcopy -i "$esp" -m make.sh ::/README.TXT
  dd if="$esp" of="$img" bs=512 seek=2048 conv=notrunc status=none
}
export SOURCE_DATE_EPOCH=0 TZ=UTC
make_disk disk-fat12.raw 3 12
make_disk disk-fat16.raw 6 16
sha256sum disk-fat12.raw disk-fat16.raw
