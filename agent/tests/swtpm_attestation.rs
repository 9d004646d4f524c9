//! The TPM attester and runtime measurement against a real TPM 2.0 (one swtpm per test).
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use sealroom_agent::attester::tpm::{AkSource, TpmAttester};
use sealroom_agent::attester::{Attester, Part};
use sealroom_agent::paths::KernelPaths;
use sealroom_agent::runtime::{LogState, RuntimeLog};
use sealroom_agent::tee_key::TeeKey;
use sealroom_measurements::binding::Nonce;
use sealroom_measurements::cel::{self, CelLog, RuntimeEvent};
use sealroom_measurements::evidence::{HashAlg, TpmEvidence};
use sealroom_tests::swtpm::{Swtpm, unique_temp_dir};
use sealroom_verifier::tpm::quote::{ExpectedExtraData, verify_quote};
use sealroom_verifier::tpm::structures::Public;

fn empty_root() -> KernelPaths {
    let dir = unique_temp_dir("root");
    std::fs::create_dir_all(&dir).unwrap();
    KernelPaths::new(dir)
}

fn quote(att: &mut TpmAttester, nonce: &Nonce, key: &TeeKey) -> TpmEvidence {
    match att.attest(nonce, key.public()).unwrap() {
        Part::Tpm(t) => t,
        other => panic!("unexpected part {other:?}"),
    }
}

fn verify(t: &TpmEvidence, pinned_ak: &[u8], nonce: &Nonce, key: &TeeKey) -> sealroom_verifier::Result<()> {
    let ak = Public::parse(pinned_ak)?;
    verify_quote(
        &t.attest,
        &t.signature,
        &ak,
        &t.pcr_banks,
        &ExpectedExtraData::Binding(*nonce, key.public().clone()),
    )
    .map(|_| ())
}

#[test]
fn quote_verifies_and_each_mutation_is_refused_for_its_reason() {
    let tpm = Swtpm::start().unwrap();
    let mut att = TpmAttester::open(&tpm.tcti(), &empty_root()).unwrap();
    assert_eq!(att.ak_source(), AkSource::CreatedUnderEk);
    let banks = att.pcr_banks();
    assert!(banks.contains(&HashAlg::Sha256), "{banks:?}");
    let key = TeeKey::generate().unwrap();
    let nonce = Nonce([0x42; 32]);
    let ev = quote(&mut att, &nonce, &key);
    let pinned = att.ak_public().to_vec();
    assert_eq!(ev.ak_public, pinned);
    assert_eq!(ev.pcr_banks.len(), banks.len());
    assert!(ev.pcr_banks.iter().all(|b| b.values.len() == 24));
    verify(&ev, &pinned, &nonce, &key).unwrap();

    // A changed nonce.
    let err = verify(&ev, &pinned, &Nonce([0x43; 32]), &key).unwrap_err().to_string();
    assert!(err.contains("extraData"), "{err}");
    // Another TEE key.
    let err = verify(&ev, &pinned, &nonce, &TeeKey::generate().unwrap()).unwrap_err().to_string();
    assert!(err.contains("extraData"), "{err}");
    // A swapped PCR value.
    let mut swapped = ev.clone();
    let bank = swapped.pcr_banks.iter_mut().find(|b| b.alg == HashAlg::Sha256).unwrap();
    let v0 = bank.values[&0].clone();
    let v15 = bank.values[&15].clone();
    bank.values.insert(0, vec![0xee; 32]);
    bank.values.insert(15, v0);
    bank.values.insert(0, v15);
    bank.values.insert(7, vec![0xee; 32]);
    let err = verify(&swapped, &pinned, &nonce, &key).unwrap_err().to_string();
    assert!(err.contains("PCR digest mismatch"), "{err}");
    // A flipped bit in the signed structure.
    let mut flipped = ev.clone();
    let last = flipped.attest.len() - 1;
    flipped.attest[last] ^= 1;
    assert!(verify(&flipped, &pinned, &nonce, &key).is_err());

    // A quote from another swtpm does not verify under the pinned AK.
    drop(att);
    let other = Swtpm::start().unwrap();
    let mut att2 = TpmAttester::open(&other.tcti(), &empty_root()).unwrap();
    let ev2 = quote(&mut att2, &nonce, &key);
    assert_ne!(ev2.ak_public, pinned);
    verify(&ev2, &ev2.ak_public, &nonce, &key).unwrap();
    let err = verify(&ev2, &pinned, &nonce, &key).unwrap_err().to_string();
    assert!(err.contains("signature"), "{err}");
}

#[test]
fn handles_are_flushed_so_the_tpm_never_runs_out_of_slots() {
    // swtpm has 3 transient object slots and no resource manager: leaking one AK per open would fail by the 4th.
    let tpm = Swtpm::start().unwrap();
    let root = empty_root();
    let key = TeeKey::generate().unwrap();
    for i in 0..6u8 {
        let mut att = TpmAttester::open(&tpm.tcti(), &root).unwrap();
        for _ in 0..3 {
            let nonce = Nonce([i; 32]);
            let ev = quote(&mut att, &nonce, &key);
            verify(&ev, att.ak_public(), &nonce, &key).unwrap();
        }
    }
}

#[test]
fn runtime_events_extend_pcr15_and_the_log_replays() {
    let tpm = Swtpm::start().unwrap();
    let root = empty_root();
    let log_dir = unique_temp_dir("rtlog");
    let mut attesters: Vec<Box<dyn Attester>> =
        vec![Box::new(TpmAttester::open(&tpm.tcti(), &root).unwrap())];
    let mut log = RuntimeLog::open(&log_dir).unwrap();
    let events = [
        RuntimeEvent::ImageReference("registry.example/app@sha256:00".into()),
        RuntimeEvent::Arg("--input=/data".into()),
        RuntimeEvent::Env("MODE=batch".into()),
        RuntimeEvent::LaunchSeparator,
    ];
    for e in &events {
        log.measure(e, &mut attesters).unwrap();
    }
    // After the separator only post-launch events.
    let err = log.measure(&RuntimeEvent::Arg("late".into()), &mut attesters).unwrap_err().to_string();
    assert!(err.contains("after the launch separator"), "{err}");
    assert_eq!(log.state(), &LogState::Consistent);
    log.measure(&RuntimeEvent::Output { name: "result".into(), digest: "sha256:ab".into() }, &mut attesters)
        .unwrap();

    // The quoted PCR 15 equals the replay of the log, in every bank.
    let key = TeeKey::generate().unwrap();
    let nonce = Nonce([9; 32]);
    let Part::Tpm(ev) = attesters[0].attest(&nonce, key.public()).unwrap() else { panic!() };
    verify(&ev, &ev.ak_public, &nonce, &key).unwrap();
    let records = CelLog::decode(&log.encode()).unwrap();
    assert_eq!(records.len(), 5);
    for bank in &ev.pcr_banks {
        cel::check_pcr(&records, bank.alg, &bank.values[&15]).unwrap();
    }
    // A tampered record is refused: content change breaks its digest.
    let mut tampered = log.encode();
    let pos = tampered.windows(5).position(|w| w == b"batch").unwrap();
    tampered[pos] = b'B';
    assert!(CelLog::decode(&tampered).is_err());

    // Reopening the same log on the same TPM is consistent (replay = PCR 15).
    drop(log);
    let mut log = RuntimeLog::open(&log_dir).unwrap();
    let values = attesters[0].runtime_register().unwrap();
    log.check_against(&values);
    assert_eq!(log.state(), &LogState::Consistent);
    std::fs::remove_dir_all(&log_dir).unwrap();
}

#[test]
fn a_power_cut_between_extend_and_append_is_reported_as_diverged() {
    let tpm = Swtpm::start().unwrap();
    let root = empty_root();
    let log_dir = unique_temp_dir("rtlog-crash");
    let mut attesters: Vec<Box<dyn Attester>> =
        vec![Box::new(TpmAttester::open(&tpm.tcti(), &root).unwrap())];
    let mut log = RuntimeLog::open(&log_dir).unwrap();
    log.measure(&RuntimeEvent::ImageReference("app".into()), &mut attesters).unwrap();
    drop(log);

    // Replay the first two steps of `measure` for a second event, then "lose power": intent written, PCR
    // extended, record never appended.
    let next = {
        let mut l = CelLog::from_records(
            &CelLog::decode(&std::fs::read(log_dir.join("runtime.cel")).unwrap()).unwrap(),
        )
        .unwrap();
        l.append(
            15,
            &[HashAlg::Sha256, HashAlg::Sha384, HashAlg::Sha1, HashAlg::Sha512],
            &RuntimeEvent::Arg("x".into()),
        )
        .unwrap()
        .clone()
    };
    std::fs::write(log_dir.join("runtime.intent"), next.encode()).unwrap();
    let digests = sealroom_agent::attester::EventDigests(next.digests.iter().cloned().collect());
    attesters[0].extend_runtime(&digests).unwrap();

    let mut log = RuntimeLog::open(&log_dir).unwrap();
    let LogState::Diverged(why) = log.state().clone() else { panic!("not diverged") };
    assert!(why.contains("intent for record 1"), "{why}");
    // Measuring more is refused, with the reason.
    let err = log.measure(&RuntimeEvent::Arg("y".into()), &mut attesters).unwrap_err().to_string();
    assert!(err.starts_with("runtime log: diverged: intent for record 1"), "{err}");

    // Even if the intent file is lost too, replay against PCR 15 catches the unlogged extend.
    std::fs::remove_file(log_dir.join("runtime.intent")).unwrap();
    let mut log = RuntimeLog::open(&log_dir).unwrap();
    assert_eq!(log.state(), &LogState::Consistent);
    let values = attesters[0].runtime_register().unwrap();
    log.check_against(&values);
    let LogState::Diverged(why) = log.state().clone() else { panic!("not diverged") };
    assert!(why.contains("pcr 15"), "{why}");
    std::fs::remove_dir_all(&log_dir).unwrap();
}

/// Provisions NV like GCE does: the ECC AK template at 0x01c10003 and its certificate at 0x01c10002 (zero-padded,
/// as the index is larger than the DER).
fn provision_gce_nv(tcti: &str, template: &[u8], cert: &[u8]) {
    provision_nv(
        tcti,
        &[(0x01c1_0003u32, template.to_vec()), (0x01c1_0002, [cert, &[0u8; 300][..]].concat())],
    );
}

/// Defines owner-readable/writable NV indices holding `data`, written in 512-byte chunks.
fn provision_nv(tcti: &str, indices: &[(u32, Vec<u8>)]) {
    use std::str::FromStr;
    use tss_esapi::attributes::NvIndexAttributesBuilder;
    use tss_esapi::handles::NvIndexTpmHandle;
    use tss_esapi::interface_types::algorithm::HashingAlgorithm;
    use tss_esapi::interface_types::resource_handles::{NvAuth, Provision};
    use tss_esapi::structures::{MaxNvBuffer, NvPublicBuilder};
    let mut ctx =
        tss_esapi::Context::new(tss_esapi::tcti_ldr::TctiNameConf::from_str(tcti).unwrap()).unwrap();
    for (index, data) in indices.iter().cloned() {
        let attrs = NvIndexAttributesBuilder::new()
            .with_owner_write(true)
            .with_owner_read(true)
            .with_auth_read(true)
            .with_no_da(true)
            .build()
            .unwrap();
        let public = NvPublicBuilder::new()
            .with_nv_index(NvIndexTpmHandle::new(index).unwrap())
            .with_index_name_algorithm(HashingAlgorithm::Sha256)
            .with_index_attributes(attrs)
            .with_data_area_size(data.len())
            .build()
            .unwrap();
        let nv =
            ctx.execute_with_nullauth_session(|c| c.nv_define_space(Provision::Owner, None, public)).unwrap();
        for (i, chunk) in data.chunks(512).enumerate() {
            let buf = MaxNvBuffer::try_from(chunk.to_vec()).unwrap();
            let offset = u16::try_from(i * 512).unwrap();
            ctx.execute_with_nullauth_session(|c| c.nv_write(NvAuth::Owner, nv, buf, offset)).unwrap();
        }
        let mut obj = nv.into();
        ctx.tr_close(&mut obj).unwrap();
    }
}

/// A new AK made by the TPM at `tcti` itself: a restricted SHA-256 signing key with `scheme` under the EK of
/// `ek_alg`. Returns the context, the EK (still loaded) and the AK's private and public parts.
fn create_ak(
    tcti: &str,
    ek_alg: tss_esapi::interface_types::algorithm::AsymmetricAlgorithm,
    scheme: tss_esapi::interface_types::algorithm::SignatureSchemeAlgorithm,
) -> (tss_esapi::Context, tss_esapi::handles::KeyHandle, tss_esapi::structures::CreateKeyResult) {
    use std::str::FromStr;
    use tss_esapi::abstraction::{ak, ek};
    use tss_esapi::interface_types::algorithm::HashingAlgorithm;
    let mut ctx =
        tss_esapi::Context::new(tss_esapi::tcti_ldr::TctiNameConf::from_str(tcti).unwrap()).unwrap();
    let ekh = ek::create_ek_object(&mut ctx, ek_alg, None).unwrap();
    let k = ak::create_ak(&mut ctx, ekh, HashingAlgorithm::Sha256, scheme, None, None).unwrap();
    (ctx, ekh, k)
}

/// An ECC P-256 restricted signing key template, made by the TPM itself (the public area of an AK).
fn ak_template(tcti: &str) -> Vec<u8> {
    use tss_esapi::interface_types::algorithm::{AsymmetricAlgorithm, SignatureSchemeAlgorithm};
    use tss_esapi::traits::Marshall;
    let (mut ctx, ekh, k) = create_ak(tcti, AsymmetricAlgorithm::Ecc, SignatureSchemeAlgorithm::EcDsa);
    ctx.flush_context(ekh.into()).unwrap();
    k.out_public.marshall().unwrap()
}

#[test]
fn the_gce_ak_from_nv_is_used_with_its_certificate() {
    let tpm = Swtpm::start().unwrap();
    let cert = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/tpm/uca_tpm_ecc_sign_cert.der"),
    )
    .unwrap();
    provision_gce_nv(&tpm.tcti(), &ak_template(&tpm.tcti()), &cert);
    let mut att = TpmAttester::open(&tpm.tcti(), &empty_root()).unwrap();
    assert_eq!(att.ak_source(), AkSource::GceEcc);
    let key = TeeKey::generate().unwrap();
    let nonce = Nonce([3; 32]);
    let ev = quote(&mut att, &nonce, &key);
    // The NV padding is cut: the chain holds exactly the DER certificate.
    assert_eq!(ev.ak_cert_chain, vec![cert]);
    let ak = Public::parse(&ev.ak_public).unwrap();
    assert!(ak.is_attestation_key());
    verify(&ev, &ev.ak_public, &nonce, &key).unwrap();
    // The AK is a primary derived from the template: reopening gives the same key.
    let first = ev.ak_public.clone();
    drop(att);
    let att = TpmAttester::open(&tpm.tcti(), &empty_root()).unwrap();
    assert_eq!(att.ak_public(), first.as_slice());
}

/// Makes the vTPM AK like Azure's paravisor does: an RSA-2048 restricted signing key (RSASSA SHA-256) under
/// the RSA EK, made persistent at 0x81000003. Returns its marshalled TPMT_PUBLIC.
fn provision_azure_ak(tcti: &str) -> Vec<u8> {
    use tss_esapi::abstraction::ak;
    use tss_esapi::handles::PersistentTpmHandle;
    use tss_esapi::interface_types::algorithm::{AsymmetricAlgorithm, SignatureSchemeAlgorithm};
    use tss_esapi::interface_types::dynamic_handles::Persistent;
    use tss_esapi::interface_types::resource_handles::Provision;
    use tss_esapi::traits::Marshall;
    let (mut ctx, ekh, k) = create_ak(tcti, AsymmetricAlgorithm::Rsa, SignatureSchemeAlgorithm::RsaSsa);
    let public = k.out_public.clone();
    let loaded = ak::load_ak(&mut ctx, ekh, None, k.out_private, k.out_public).unwrap();
    ctx.flush_context(ekh.into()).unwrap();
    let persistent = Persistent::Persistent(PersistentTpmHandle::new(0x8100_0003).unwrap());
    let mut obj = ctx
        .execute_with_nullauth_session(|c| c.evict_control(Provision::Owner, loaded.into(), persistent))
        .unwrap();
    ctx.flush_context(loaded.into()).unwrap();
    ctx.tr_close(&mut obj).unwrap();
    public.marshall().unwrap()
}

fn azure_testdata(rel: &str) -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../verifier/testdata/azure").join(rel),
    )
    .unwrap()
}

/// The probe picks the Azure attester when NV 0x01400001 exists; its evidence carries the NV bytes, the persistent
/// AK with its certificate, and a quote of SHA-256 PCRs 0..=23 bound to nonce and key. libtpms caps an NV index
/// at 2048 bytes, so the index holds the first 2048 bytes of a real (2600-byte) SNP HCL report.
#[test]
fn azure_vtpm_is_probed_before_the_plain_tpm_and_reads_its_nv_report_and_persistent_ak() {
    use sealroom_agent::attester::azure::{self, HCL_REPORT_NV_INDEX};
    let tpm = Swtpm::start().unwrap();
    let hcl = azure_testdata("az-snp-vtpm/hcl-report.bin");
    let stored = hcl[..2048].to_vec();
    let cert = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/tpm/uca_tpm_ecc_sign_cert.der"),
    )
    .unwrap();
    // Without the NV index the plain TPM attester is chosen.
    assert_eq!(azure::open_tpm(&tpm.tcti(), &empty_root()).unwrap().name(), "tpm");
    let ak_public = provision_azure_ak(&tpm.tcti());
    // Without the report the AK alone does not make an Azure VM.
    assert_eq!(azure::open_tpm(&tpm.tcti(), &empty_root()).unwrap().name(), "tpm");
    provision_nv(
        &tpm.tcti(),
        &[(HCL_REPORT_NV_INDEX, stored.clone()), (0x01c1_01d0, [&cert[..], &[0u8; 100][..]].concat())],
    );

    // The probe asks IMDS for the VCEK once; this one answers 404, so the evidence has none (fail closed).
    let imds = LoopbackHttp::start(|_| http_response(404, "text/plain", b"not here"));
    let mut att = azure::open_tpm_with_imds(&tpm.tcti(), &empty_root(), &imds.client()).unwrap();
    assert_eq!(imds.requests().len(), 1, "asked once, at start-up");
    assert_eq!(att.name(), "azure-vtpm");
    assert_eq!(att.platform(), sealroom_measurements::evidence::Platform::AzureSnpVtpm);
    let key = TeeKey::generate().unwrap();
    let nonce = Nonce([0x5a; 32]);
    let Part::Azure(ev) = att.attest(&nonce, key.public()).unwrap() else { panic!("not an azure part") };
    assert!(ev.vcek.is_empty() && ev.td_quote.is_empty());
    assert_eq!(imds.requests().len(), 1, "evidence does not ask IMDS again");
    assert_eq!(ev.hcl_report, stored, "the whole NV index, read across the 1024-byte NV buffer limit");
    assert_eq!(ev.vtpm.ak_public, ak_public, "the persistent AK at 0x81000003");
    assert_eq!(ev.vtpm.ak_cert_chain, vec![cert], "the AK certificate from NV 0x01c101d0, padding cut");
    assert_eq!(ev.vtpm.pcr_banks.len(), 1);
    assert_eq!(ev.vtpm.pcr_banks[0].alg, HashAlg::Sha256);
    assert_eq!(ev.vtpm.pcr_banks[0].values.keys().copied().collect::<Vec<_>>(), (0..24).collect::<Vec<_>>());
    verify(&ev.vtpm, &ak_public, &nonce, &key).unwrap();
    assert!(
        verify(&ev.vtpm, &ak_public, &Nonce([0x5b; 32]), &key).unwrap_err().to_string().contains("extraData")
    );
    // Runtime events still extend PCR 15 in every allocated bank, and the persistent AK survives the attester.
    assert!(att.runtime_algorithms().len() >= 2, "{:?}", att.runtime_algorithms());
    drop(att);
    let again = azure::open_tpm_with_imds(&tpm.tcti(), &empty_root(), &imds.client()).unwrap();
    assert_eq!(again.name(), "azure-vtpm");
}

/// The full verification chain with a real, complete HCL report (SNP, Milan) and its VCEK fetched from a
/// loopback IMDS: everything the verifier can check passes (HCL var-data digest = REPORT_DATA, VCEK signature
/// over the SNP report, nonce in extraData, PCR digest), and it refuses for exactly one reason: the quote is
/// signed by the swtpm AK, not by the HCLAkPub the hardware report vouches for.
#[test]
fn azure_evidence_passes_every_check_but_the_hcl_ak_binding_which_a_swtpm_ak_cannot_meet() {
    use sealroom_agent::attester::azure::{AzureTee, AzureVtpmAttester};
    use sealroom_agent::attester::tpm::connect;
    use sealroom_measurements::evidence::Platform;
    use sealroom_verifier::x509::Certificate;
    let tpm = Swtpm::start().unwrap();
    let ak_public = provision_azure_ak(&tpm.tcti());
    let hcl = azure_testdata("az-snp-vtpm/hcl-report.bin");
    let vcek = Certificate::chain_from_pem(&azure_testdata("az-snp-vtpm/vcek.pem"))
        .unwrap()
        .remove(0)
        .der()
        .to_vec();
    let mut att =
        AzureVtpmAttester::with_report(connect(&tpm.tcti()).unwrap(), &empty_root(), hcl.clone()).unwrap();
    assert_eq!(att.tee(), AzureTee::SevSnp);
    // The VCEK and its chain as Azure's IMDS serves them, over HTTP on loopback.
    let imds = LoopbackHttp::start(|_| http_response(200, "application/json", &amd_certification_body()));
    att.fetch_collateral(&imds.client()).unwrap();
    let asked = imds.requests();
    assert_eq!(asked.len(), 1);
    assert_eq!(
        (asked[0].method.as_str(), asked[0].path.as_str()),
        ("GET", "/metadata/THIM/amd/certification")
    );
    assert_eq!(asked[0].header("metadata"), Some("true"), "IMDS refuses requests without Metadata: true");
    let key = TeeKey::generate().unwrap();
    let nonce = Nonce([0x77; 32]);
    let Part::Azure(az) = att.attest(&nonce, key.public()).unwrap() else { panic!("not an azure part") };
    assert_eq!(
        (az.hcl_report.as_slice(), az.vcek.as_slice(), az.vtpm.ak_public.as_slice()),
        (&hcl[..], &vcek[..], &ak_public[..])
    );
    // Through protobuf and back, as the gRPC service ships it (size limits included). The VCEK of
    // hcl-report.bin is valid 2023-05-02..2030-05-02 (verifier/testdata/azure/MANIFEST.md).
    let failures = appraise_azure(az, Platform::AzureSnpVtpm, nonce, &key, "2024-01-01T00:00:00Z");
    assert_eq!(failures, vec![AK_MISMATCH.to_string()]);
}

/// The verifier's reason when the quote's AK is not the HCLAkPub the hardware report vouches for: the only one
/// left for swtpm-made Azure evidence (swtpm cannot hold the paravisor's AK).
const AK_MISMATCH: &str = "azure vtpm: quote AK is not the HCL report's HCLAkPub";

/// One request as the loopback server saw it.
#[derive(Debug, Clone)]
struct HttpRequest {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl HttpRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A real HTTP/1.1 server on loopback (std sockets, one connection at a time) standing in for Azure's IMDS:
/// `respond` returns the raw response bytes, or `None` to hold the connection open without answering.
struct LoopbackHttp {
    addr: std::net::SocketAddr,
    requests: std::sync::Arc<std::sync::Mutex<Vec<HttpRequest>>>,
}

type Respond = dyn Fn(&HttpRequest) -> Option<Vec<u8>> + Send + Sync;

impl LoopbackHttp {
    fn start(respond: impl Fn(&HttpRequest) -> Vec<u8> + Send + Sync + 'static) -> Self {
        Self::start_raw(Box::new(move |r| Some(respond(r))))
    }

    fn start_raw(respond: Box<Respond>) -> Self {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = std::sync::Arc::clone(&requests);
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                stream.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break Some(i);
                    }
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => break None,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let Some(head_end) = head_end else { continue };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let mut lines = head.split("\r\n");
                let mut first = lines.next().unwrap().split(' ');
                let (method, path) = (first.next().unwrap().to_owned(), first.next().unwrap().to_owned());
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                    .collect();
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k == "content-length")
                    .map_or(0, |(_, v)| v.parse().unwrap());
                let mut body = buf[head_end + 4..].to_vec();
                while body.len() < len {
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => body.extend_from_slice(&chunk[..n]),
                    }
                }
                let request = HttpRequest { method, path, headers, body };
                let answer = respond(&request);
                seen.lock().unwrap().push(request);
                match answer {
                    Some(bytes) => {
                        let _ = stream.write_all(&bytes);
                    }
                    None => held.push(stream),
                }
            }
        });
        Self { addr, requests }
    }

    fn client(&self) -> sealroom_agent::attester::azure_imds::Imds {
        self.client_with_timeout(std::time::Duration::from_secs(5))
    }

    fn client_with_timeout(
        &self,
        timeout: std::time::Duration,
    ) -> sealroom_agent::attester::azure_imds::Imds {
        sealroom_agent::attester::azure_imds::Imds::new(format!("http://{}", self.addr), timeout)
    }

    fn requests(&self) -> Vec<HttpRequest> {
        self.requests.lock().unwrap().clone()
    }
}

fn http_response(status: u16, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// The AMD certification JSON as IMDS serves it, from the real bundle of hcl-report.bin's VCEK, ASK and ARK.
fn amd_certification_body() -> Vec<u8> {
    let pem = String::from_utf8(azure_testdata("az-snp-vtpm/vcek.pem")).unwrap();
    let end = "-----END CERTIFICATE-----";
    let blocks: Vec<&str> = pem.split_inclusive(end).filter(|b| b.contains("BEGIN")).collect();
    assert_eq!(blocks.len(), 3);
    serde_json::json!({
        "vcekCert": blocks[0].trim_start(),
        "tcbm": "DB18000000000004",
        "certificateChain": blocks[1..].concat().trim_start(),
        "cacheControl": "86400",
    })
    .to_string()
    .into_bytes()
}

/// Appraises one Azure evidence part at `at` and returns every failure.
fn appraise_azure(
    az: sealroom_measurements::evidence::AzureVtpmEvidence,
    platform: sealroom_measurements::evidence::Platform,
    nonce: Nonce,
    key: &TeeKey,
    at: &str,
) -> Vec<String> {
    use sealroom_measurements::evidence::Evidence;
    use sealroom_verifier::appraisal::{Context, EvidenceInput, Policy, appraise};
    use sealroom_verifier::snp::EndorsementCache;
    let ev = Evidence {
        nonce,
        tee_public_key: key.public().clone(),
        platform,
        tpm: None,
        tdx: None,
        sev_snp: None,
        azure: Some(az),
        runtime_event_log: Vec::new(),
        gpus: Vec::new(),
    };
    let ev = Evidence::try_from(sealroom_proto::attestation::v1::Evidence::from(ev)).unwrap();
    let cache = EndorsementCache::default();
    let ctx = Context {
        at: sealroom_verifier::x509::parse_time(at).unwrap(),
        nonce: None,
        snp_cache: &cache,
        tdx_collateral: None,
        tdx_root: None,
        enrolled_tpm_aks: &[],
        tpm_ek_activated: None,
        gpu: None,
    };
    appraise(&EvidenceInput::Sealroom(Box::new(ev)), &Policy::default(), &ctx).failures()
}

/// Azure TDX: the agent posts the HCL report's TDREPORT to the loopback IMDS `/acc/tdquote` as Azure's tooling
/// does and ships the TD quote it gets back (the real one from that VM); the verifier checks the TD quote's
/// signatures and that its REPORT_DATA is the HCL TDREPORT's, and refuses only the swtpm AK.
#[test]
fn azure_tdx_evidence_carries_the_imds_td_quote_over_the_hcl_tdreport() {
    use base64::Engine as _;
    use sealroom_agent::attester::azure::{AzureTee, AzureVtpmAttester};
    use sealroom_agent::attester::tpm::connect;
    let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let tpm = Swtpm::start().unwrap();
    provision_azure_ak(&tpm.tcti());
    let hcl = azure_testdata("az-tdx-vtpm/hcl-report.bin");
    let td_quote = azure_testdata("az-tdx-vtpm/td-quote.bin");
    let mut att =
        AzureVtpmAttester::with_report(connect(&tpm.tcti()).unwrap(), &empty_root(), hcl.clone()).unwrap();
    assert_eq!(att.tee(), AzureTee::Tdx);
    let reply = serde_json::json!({ "quote": b64url.encode(&td_quote) }).to_string().into_bytes();
    let imds = LoopbackHttp::start(move |_| http_response(200, "application/json", &reply));
    att.fetch_collateral(&imds.client()).unwrap();
    let asked = imds.requests();
    assert_eq!(asked.len(), 1);
    assert_eq!((asked[0].method.as_str(), asked[0].path.as_str()), ("POST", "/acc/tdquote"));
    assert_eq!(asked[0].header("content-type"), Some("application/json"));
    let sent: serde_json::Value = serde_json::from_slice(&asked[0].body).unwrap();
    assert_eq!(b64url.decode(sent["report"].as_str().unwrap()).unwrap(), &hcl[0x20..0x420], "the TDREPORT");

    let key = TeeKey::generate().unwrap();
    let nonce = Nonce([0x78; 32]);
    let Part::Azure(az) = att.attest(&nonce, key.public()).unwrap() else { panic!("not an azure part") };
    assert_eq!((az.td_quote.as_slice(), az.vcek.is_empty()), (td_quote.as_slice(), true));
    // PCK certificate valid 2023-09-13..2030-09-13 (verifier/testdata/azure/MANIFEST.md).
    let failures = appraise_azure(
        az,
        sealroom_measurements::evidence::Platform::AzureTdxVtpm,
        nonce,
        &key,
        "2024-01-01T00:00:00Z",
    );
    assert_eq!(failures, vec![AK_MISMATCH.to_string()]);
}

/// IMDS answers that must not become collateral: each is refused with one line naming the URL and the cause,
/// never a panic, and leaves the attester's evidence without collateral.
#[test]
fn imds_failures_are_one_line_reasons() {
    use sealroom_agent::attester::azure_imds::Imds;
    let json = |body: &'static [u8]| move |_: &HttpRequest| http_response(200, "application/json", body);
    let hcl_tdx = azure_testdata("az-tdx-vtpm/hcl-report.bin");
    let cases: Vec<(LoopbackHttp, &str)> = vec![
        (LoopbackHttp::start(|_| http_response(404, "text/plain", b"no")), "HTTP status 404 Not Found"),
        (LoopbackHttp::start(json(b"<html>hello</html>")), "not the AMD certification JSON"),
        (LoopbackHttp::start(json(br#"{"vcekCert": "x", "certificateChain": "y"}"#)), "vcekCert: line 1"),
        (
            LoopbackHttp::start(json(
                b"{\"vcekCert\": \"-----BEGIN CERTIFICATE-----\\nAAAA\\n-----END CERTIFICATE-----\", \"certificateChain\": \"\"}",
            )),
            "vcekCert: certificate 1: DER",
        ),
        (
            LoopbackHttp::start(|_| http_response(200, "application/json", &vec![b' '; 70 * 1024])),
            "response larger than 65536 bytes",
        ),
        (
            // No Content-Length: the limit holds while streaming.
            LoopbackHttp::start(|_| {
                let mut out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
                for _ in 0..20 {
                    out.extend_from_slice(format!("{:x}\r\n", 4096).as_bytes());
                    out.extend_from_slice(&[b'{'; 4096]);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
                out
            }),
            "response larger than 65536 bytes",
        ),
        (LoopbackHttp::start(|_| b"garbage, not HTTP\r\n\r\n".to_vec()), "error sending request: "),
    ];
    for (server, want) in &cases {
        let e = server.client().amd_certificates().unwrap_err().to_string();
        assert!(e.contains(want), "{want:?} not in {e:?}");
        assert!(e.starts_with("azure-vtpm: imds: http://127.0.0.1:"), "{e}");
        assert!(!e.contains('\n'), "one line: {e:?}");
    }
    // TD quote answers: not base64url, not a TDX quote, too large.
    let tdx_cases: Vec<(Vec<u8>, &str)> = vec![
        (br#"{"quote": "***"}"#.to_vec(), "quote is not base64url"),
        (br#"{"quote": "AAAAAAAAAAAAAAAA"}"#.to_vec(), "not a TDX quote (version 0"),
        (br#"{"report": "AAAA"}"#.to_vec(), "not the TD quote JSON"),
        (serde_json::json!({ "quote": "A".repeat(30_000) }).to_string().into_bytes(), "exceeds 16384 bytes"),
    ];
    for (body, want) in tdx_cases {
        let server = LoopbackHttp::start(move |_| http_response(200, "application/json", &body));
        let e = server.client().td_quote(&hcl_tdx).unwrap_err().to_string();
        assert!(e.contains(want), "{want:?} not in {e:?}");
    }
    // Nobody listening, and a server that never answers (bounded by the timeout).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let e = Imds::new(format!("http://{closed}"), std::time::Duration::from_secs(5))
        .amd_certificates()
        .unwrap_err()
        .to_string();
    assert!(e.contains("onnection refused"), "{e}");
    let silent = LoopbackHttp::start_raw(Box::new(|_| None));
    let started = std::time::Instant::now();
    let e = silent.client_with_timeout(std::time::Duration::from_millis(300)).amd_certificates().unwrap_err();
    assert!(e.to_string().contains("timed out"), "{e}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}
