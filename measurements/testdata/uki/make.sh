#!/usr/bin/env bash
# Regenerates the UKI fixture and its oracle values (run by hand; the outputs are committed).
#   uki.efi          ukify-built UKI: systemd-stub 254 (Debian systemd-boot-efi), .linux = systemd-bootx64.efi (a real
#                    PE standing in for an EFI-stub kernel), fixed initrd/cmdline/osrel/uname.
#   uki-signed.efi   uki.efi signed by osslsigncode with a throwaway key (adds a certificate table).
#   expected.json    oracles: `systemd-measure calculate --phase=` (PCR 11) over the sections extracted with
#                    objcopy, `osslsigncode verify` "Calculated message digest" (Authenticode), sha256sum.
set -euo pipefail
cd "$(dirname "$0")"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
stub=/usr/lib/systemd/boot/efi/linuxx64.efi.stub
printf 'ID=sealroom\nVERSION_ID=0-test\n' > "$work/osrel"
printf 'console=ttyS0 rdinit=/init\n' > "$work/cmdline"
python3 -c 'import sys; sys.stdout.buffer.write(bytes((i * 7 + 3) % 251 for i in range(4099)))' > "$work/initrd"
cp /usr/lib/systemd/boot/efi/systemd-bootx64.efi "$work/linux"
SOURCE_DATE_EPOCH=0 /usr/bin/python3 /usr/lib/systemd/ukify build --linux="$work/linux" --initrd="$work/initrd" \
  --cmdline=@"$work/cmdline" --os-release=@"$work/osrel" --uname=6.1.0-sealroom-test --stub="$stub" --output=uki.efi
openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=sealroom-test -days 1 -keyout "$work/k.pem" -out "$work/c.pem" 2>/dev/null
for h in sha256 sha384; do
  osslsigncode sign -h "$h" -certs "$work/c.pem" -key "$work/k.pem" -in uki.efi -out "$work/signed-$h.efi" >/dev/null
done
cp "$work/signed-sha256.efi" uki-signed.efi
for s in linux osrel cmdline initrd uname sbat; do
  objcopy -O binary --only-section=".$s" uki.efi "$work/$s.sect"
done
measure() { /usr/lib/systemd/systemd-measure calculate --phase= --bank="$1" --json=short \
  --linux="$work/linux.sect" --osrel="$work/osrel.sect" --cmdline="$work/cmdline.sect" \
  --initrd="$work/initrd.sect" --uname="$work/uname.sect" --sbat="$work/sbat.sect" \
  | python3 -c "import json,sys; print(json.load(sys.stdin)['$1'][0]['hash'])"; }
digest() { osslsigncode verify -in "$1" 2>/dev/null | sed -n 's/^Calculated message digest *: *//p' | tr 'A-F' 'a-f' | tr -d ' '; }
cat > expected.json <<JSON
{
  "_source": "measurements/testdata/uki/make.sh: systemd-measure $(/usr/lib/systemd/systemd-measure --version | head -1 | awk '{print $2}'), osslsigncode $(osslsigncode --version | head -1 | awk '{print $2}' | tr -d ,)",
  "file_sha256": "$(sha256sum uki.efi | cut -d' ' -f1)",
  "pcr11_sha256": "$(measure sha256)",
  "pcr11_sha384": "$(measure sha384)",
  "authenticode_sha256": "$(digest "$work/signed-sha256.efi")",
  "authenticode_sha384": "$(digest "$work/signed-sha384.efi")",
  "linux_file_sha256": "$(sha256sum "$work/linux" | cut -d' ' -f1)"
}
JSON
cat expected.json
