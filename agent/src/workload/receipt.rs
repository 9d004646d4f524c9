//! The output receipt: after the workload ended and its `output` event was measured, the agent asks the key
//! broker for a receipt with fresh evidence (`Challenge`, then `KeyBroker.Receipt`). The broker appraises it
//! like a key release and signs an EAR JWT naming the image measurements, the workload and the output digest.
//!
//! The result directory the operator collects ([`write_result`]):
//! ```text
//! output/          the workload's files, exactly as measured (with `seal_output_to`: `output.sealed` instead of
//!                  output/ and output.sha256, see super::sealed)
//! output.sha256    the listing the output digest covers (`sha256sum` format, sorted by path bytes;
//!                  sealroom_measurements::output): sha256(output.sha256) is the output digest
//! receipt.jwt      the broker's receipt (compact JWS, ES256)
//! evidence.pb      the evidence the receipt was issued for (protobuf sealroom.attestation.v1.Evidence, as
//!                  `sealroom attest --out` writes it)
//! receipts/NAME.jwt, receipts/NAME.evidence.pb
//!                  the receipt of each broker of the spec (NAME: its name in the spec; `broker` for the
//!                  single-broker form) and the evidence it was issued for; `receipt.jwt` and `evidence.pb`
//!                  are copies of the first broker's
//! ```
//! Every broker is asked for its own receipt (judged by its own first key id's policy): each provider signs
//! only for itself, and a user checks one from each (`sealroom verify-receipt --receipt … --broker-key …`).
//! The receipts carry different nonces and so different evidence files, but name the same TEE key, registers,
//! workload, releases and output.
//! In a VM the directory leaves through a raw disk ([`export_tar`]): the agent writes it as a plain ustar
//! archive from sector 0 of the operator's output disk, which the host reads with `tar -xf disk.raw` (the
//! zero-filled rest of the disk ends the archive). No file system, no network path to the host is needed.

use std::io::Write;
use std::path::Path;

use sealroom_measurements::broker_response::{self, ReceiptStatement, TeeKeyField};
use sealroom_proto::keybroker::v1 as kb;

use super::digest::Sha256Digest;
use super::spec::BrokerEndpoint;
use crate::error::{Error, Result};
use crate::worker::AttestationHandle;

const STAGE: &str = "receipt";
/// Largest result archive written to an output disk.
pub const MAX_EXPORT_BYTES: u64 = 256 << 20;

/// File names in the result directory.
pub mod names {
    /// The workload's output files.
    pub const OUTPUT_DIR: &str = "output";
    /// The output listing.
    pub const LISTING: &str = "output.sha256";
    /// The receipt JWT.
    pub const RECEIPT: &str = "receipt.jwt";
    /// The evidence.
    pub const EVIDENCE: &str = "evidence.pb";
    /// The directory of every broker's receipt.
    pub const RECEIPTS_DIR: &str = "receipts";

    /// Broker `name`'s receipt, under [`RECEIPTS_DIR`].
    #[must_use]
    pub fn broker_receipt(name: &str) -> String {
        format!("{name}.jwt")
    }

    /// The evidence broker `name`'s receipt was issued for, under [`RECEIPTS_DIR`].
    #[must_use]
    pub fn broker_evidence(name: &str) -> String {
        format!("{name}.evidence.pb")
    }
}

fn err(reason: impl Into<String>) -> Error {
    Error::workload(STAGE, reason)
}

/// A receipt and the evidence it was issued for.
#[derive(Debug, Clone)]
pub struct Receipt {
    /// The EAR JWT.
    pub token: String,
    /// The evidence, protobuf-encoded.
    pub evidence: Vec<u8>,
}

/// Obtains a receipt for the measured output `output_digest` from `broker`, judged by `key_id`'s policy.
/// Must be called after the `output` event was measured (the evidence's runtime log then ends with it).
///
/// # Errors
/// An unreachable broker, failing evidence, or the broker's refusal (its one-line reason).
pub async fn obtain(
    handle: &AttestationHandle,
    endpoint: &BrokerEndpoint,
    key_id: &str,
    output_digest: &Sha256Digest,
) -> Result<Receipt> {
    let broker = endpoint.url.as_str();
    let (mut client, nonce, tpm_activation) =
        super::broker::connect_and_challenge(endpoint, handle, STAGE).await?;
    let evidence = handle.evidence(nonce).await?;
    let kem_id = evidence.tee_public_key.kem().id();
    let tee_key = evidence.tee_public_key.as_bytes().to_vec();
    let evidence: sealroom_proto::attestation::v1::Evidence = evidence.into();
    let encoded = prost::Message::encode_to_vec(&evidence);
    let output_digest = output_digest.to_string();
    let response = client
        .receipt(kb::ReceiptRequest {
            nonce: nonce.0.to_vec(),
            evidence: encoded.clone(),
            key_id: key_id.to_owned(),
            output_digest: output_digest.clone(),
            tpm_activation,
        })
        .await
        .map_err(|s| err(format!("broker {broker}: receipt: {}", s.message())))?
        .into_inner();
    let input = broker_response::receipt_signing_input(&ReceiptStatement {
        nonce: &nonce,
        tee_key: TeeKeyField { kem_id, key: &tee_key },
        key_id,
        output_digest: &output_digest,
        receipt: &response.receipt,
        refusal: &response.refusal,
    });
    broker_response::verify(&endpoint.key_id, &response.broker_public_key, &response.signature, &input)
        .map_err(|e| err(e.to_string()))?;
    if !response.refusal.is_empty() || response.receipt.is_empty() {
        return Err(err(format!("broker refused the receipt: {}", response.refusal)));
    }
    Ok(Receipt { token: response.receipt, evidence: encoded })
}

fn io(path: &Path, e: &std::io::Error) -> Error {
    err(format!("{}: {e}", path.display()))
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| io(to, &e))?;
    for entry in std::fs::read_dir(from).map_err(|e| io(from, &e))? {
        let entry = entry.map_err(|e| io(from, &e))?;
        let ty = entry.file_type().map_err(|e| io(&entry.path(), &e))?;
        let dest = to.join(entry.file_name());
        if ty.is_dir() {
            copy_tree(&entry.path(), &dest)?;
        } else if ty.is_file() {
            std::fs::copy(entry.path(), &dest).map_err(|e| io(&dest, &e))?;
        } else {
            // The output digest already refused anything else; never follow a link here.
            return Err(err(format!("{}: not a regular file", entry.path().display())));
        }
    }
    Ok(())
}

/// Writes the result directory (see the module documentation) into `dir`: a copy of `output_dir`, the
/// listing and every broker's receipt with its evidence (`receipts`: broker name and receipt, in spec order;
/// the first is also `receipt.jwt` and `evidence.pb`).
///
/// # Errors
/// I/O failures.
pub fn write_result(
    dir: &Path,
    output_dir: &Path,
    listing: &str,
    receipts: &[(String, Receipt)],
) -> Result<()> {
    copy_tree(output_dir, &dir.join(names::OUTPUT_DIR))?;
    let p = dir.join(names::LISTING);
    std::fs::write(&p, listing.as_bytes()).map_err(|e| io(&p, &e))?;
    write_receipts(dir, receipts)
}

/// Writes every broker's receipt and its evidence into the result directory `dir` (`receipts`: broker name and
/// receipt, in spec order; the first is also `receipt.jwt` and `evidence.pb`).
///
/// # Errors
/// I/O failures.
pub fn write_receipts(dir: &Path, receipts: &[(String, Receipt)]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| io(dir, &e))?;
    let write = |name: &Path, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).map_err(|e| io(&p, &e))
    };
    if let Some((_, r)) = receipts.first() {
        write(Path::new(names::RECEIPT), r.token.as_bytes())?;
        write(Path::new(names::EVIDENCE), &r.evidence)?;
        let sub = dir.join(names::RECEIPTS_DIR);
        std::fs::create_dir_all(&sub).map_err(|e| io(&sub, &e))?;
    }
    for (name, r) in receipts {
        let under = Path::new(names::RECEIPTS_DIR);
        write(&under.join(names::broker_receipt(name)), r.token.as_bytes())?;
        write(&under.join(names::broker_evidence(name)), &r.evidence)?;
    }
    Ok(())
}

/// Asks every broker of the spec for its receipt of `output_digest` (each judged by its first key id's
/// policy), in spec order: the receipts obtained, by broker name, and one line per broker that gave none.
pub async fn obtain_all(
    handle: &AttestationHandle,
    spec: &super::spec::WorkloadSpec,
    output_digest: &Sha256Digest,
) -> (Vec<(String, Receipt)>, Vec<String>) {
    let (mut receipts, mut failures) = (Vec::new(), Vec::new());
    for source in &spec.brokers {
        let b = &source.broker;
        let Some(key) = source.key_ids.first() else { continue };
        match obtain(handle, b, key, output_digest).await {
            Ok(r) => receipts.push((b.name.clone(), r)),
            Err(e) => failures.push(format!("{}: {e}", super::broker::provider_label(b))),
        }
    }
    (receipts, failures)
}

/// Writes `dir` as a ustar archive (entries named relative to `dir`, sorted, deterministic headers) from the
/// start of `device` (a raw disk or a file), followed by the archive's end blocks, and syncs it.
///
/// # Errors
/// I/O failures, or an archive larger than [`MAX_EXPORT_BYTES`] or than the device.
pub fn export_tar(dir: &Path, device: &Path) -> Result<u64> {
    let mut entries = Vec::new();
    collect(dir, Path::new(""), &mut entries)?;
    entries.sort();
    let mut b = tar::Builder::new(Vec::new());
    b.mode(tar::HeaderMode::Deterministic);
    for rel in &entries {
        let full = dir.join(rel);
        b.append_path_with_name(&full, rel).map_err(|e| io(&full, &e))?;
    }
    let bytes = b.into_inner().map_err(|e| io(device, &e))?;
    let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if len > MAX_EXPORT_BYTES {
        return Err(err(format!("result archive is {len} bytes, more than {MAX_EXPORT_BYTES}")));
    }
    let mut f = std::fs::OpenOptions::new().write(true).open(device).map_err(|e| io(device, &e))?;
    f.write_all(&bytes).map_err(|e| io(device, &e))?;
    f.sync_all().map_err(|e| io(device, &e))?;
    Ok(len)
}

fn collect(root: &Path, rel: &Path, out: &mut Vec<std::path::PathBuf>) -> Result<()> {
    let here = root.join(rel);
    for entry in std::fs::read_dir(&here).map_err(|e| io(&here, &e))? {
        let entry = entry.map_err(|e| io(&here, &e))?;
        let ty = entry.file_type().map_err(|e| io(&entry.path(), &e))?;
        let r = rel.join(entry.file_name());
        if ty.is_dir() {
            out.push(r.clone());
            collect(root, &r, out)?;
        } else if ty.is_file() {
            out.push(r);
        }
    }
    Ok(())
}

/// The virtio serial of the operator's output disk (QEMU `-device virtio-blk-pci,drive=…,serial=sealroom-output`).
pub const OUTPUT_DISK_SERIAL: &str = "sealroom-output";

/// In the VM, after the workload's output was measured: obtain every broker's receipt ([`obtain_all`]),
/// write the result directory under the work directory and, when an output disk is attached, export it there.
/// Every step says on the console what happened; nothing here stops the agent.
pub async fn finish_in_vm(
    handle: &AttestationHandle,
    spec: &super::spec::WorkloadSpec,
    cfg: &super::WorkloadConfig,
    outcome: &super::Outcome,
) {
    let say = |a: std::fmt::Arguments<'_>| super::console(format_args!("receipt: {a}"));
    let (receipts, failures) = obtain_all(handle, spec, &outcome.output_digest).await;
    for (name, _) in &receipts {
        say(format_args!("issued by broker {name} for output {}", outcome.output_digest));
    }
    for f in &failures {
        say(format_args!("REFUSED/FAILED: {f}"));
    }
    if spec.key_ids().is_empty() {
        say(format_args!("no broker or key in the spec: the result has no receipt"));
    }
    let dir = cfg.work_dir.join("result");
    let written = match &spec.sealed.output_to {
        // The output leaves sealed to the reply key: the result holds only its ciphertext.
        Some(to) => super::sealed::write_sealed_result(handle, to, &dir, cfg, outcome, &receipts).await,
        None => write_result(&dir, &cfg.output_dir, &outcome.output_listing, &receipts),
    };
    if let Err(e) = written {
        return say(format_args!("FAILED: {e}"));
    }
    match super::inputs::resolve(&format!("serial:{OUTPUT_DISK_SERIAL}"), Path::new("/sys/block")) {
        Ok(disk) => match export_tar(&dir, &disk) {
            Ok(n) => say(format_args!("result ({n} bytes) written to {} as a tar archive", disk.display())),
            Err(e) => say(format_args!("FAILED: {e}")),
        },
        Err(_) => say(format_args!(
            "no output disk (serial {OUTPUT_DISK_SERIAL}); result kept in {}",
            dir.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_directory_round_trips_through_a_raw_disk_tar() {
        let base = tempfile::tempdir().unwrap();
        let out = base.path().join("out");
        std::fs::create_dir_all(out.join("sub")).unwrap();
        std::fs::write(out.join("metrics.json"), b"{\"r2\": 0.5}\n").unwrap();
        std::fs::write(out.join("sub/model.txt"), b"w=1\n").unwrap();
        let (d, listing) = sealroom_measurements::output::digest_dir(&out).unwrap();
        let result = base.path().join("result");
        let receipt = Receipt { token: "a.b.c".into(), evidence: vec![1, 2, 3] };
        let second = Receipt { token: "d.e.f".into(), evidence: vec![4] };
        write_result(&result, &out, &listing, &[("a".into(), receipt), ("b".into(), second)]).unwrap();
        // A zero-filled "disk" larger than the archive, as QEMU's raw output disk.
        let disk = base.path().join("disk.raw");
        std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
        let n = export_tar(&result, &disk).unwrap();
        assert!(n < 1 << 20);
        let extracted = base.path().join("x");
        std::fs::create_dir_all(&extracted).unwrap();
        let st = std::process::Command::new("tar")
            .arg("-xf")
            .arg(&disk)
            .arg("-C")
            .arg(&extracted)
            .status()
            .unwrap();
        assert!(st.success());
        let (d2, listing2) = sealroom_measurements::output::digest_dir(&extracted.join("output")).unwrap();
        assert_eq!((d2, listing2.as_str()), (d, listing.as_str()));
        assert_eq!(std::fs::read_to_string(extracted.join("output.sha256")).unwrap(), listing);
        assert_eq!(std::fs::read(extracted.join("evidence.pb")).unwrap(), vec![1, 2, 3]);
        assert_eq!(std::fs::read_to_string(extracted.join("receipt.jwt")).unwrap(), "a.b.c");
        assert_eq!(std::fs::read_to_string(extracted.join("receipts/a.jwt")).unwrap(), "a.b.c");
        assert_eq!(std::fs::read_to_string(extracted.join("receipts/b.jwt")).unwrap(), "d.e.f");
        assert_eq!(std::fs::read(extracted.join("receipts/b.evidence.pb")).unwrap(), vec![4]);
    }
}
