//! Key release on an Azure-style confidential VM (SEV-SNP behind a paravisor, evidence = HCL report + vTPM
//! quote), end to end without Azure: swtpm plays the paravisor's vTPM with an RSA AK made persistent at
//! 0x81000003 as Azure's is, the HCL report is Azure's real layout whose runtime claims name that AK as
//! HCLAkPub, its SNP report's REPORT_DATA is SHA-256 of those claims and it is signed by a VCEK of the AMD-like
//! test PKI (`sealroom_verifier::snp::test_pki`, feature `test-anchors`, a dev-dependency only). The agent's own
//! Azure attester quotes SHA-256 PCRs 0..=23 with extraData = the binding of the broker's nonce and the TEE key,
//! its runtime log extends PCR 15, and the real broker (`Broker::release`, `VerifierAppraiser` trusting only the
//! test root) releases the key, which the agent's TEE key opens. A policy without Azure refuses it by name.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic, clippy::expect_used)]

use std::sync::Arc;

use sealroom_agent::attester::azure::AzureVtpmAttester;
use sealroom_agent::attester::tpm::connect;
use sealroom_agent::attester::{Attester, Part};
use sealroom_agent::paths::KernelPaths;
use sealroom_agent::runtime::RuntimeLog;
use sealroom_agent::tee_key::TeeKey;
use sealroom_broker::appraisal::VerifierAppraiser;
use sealroom_broker::audit::AuditLog;
use sealroom_broker::keystore::{Kek, KeyStore};
use sealroom_broker::nonce::NonceBook;
use sealroom_broker::policy::GoldenSet;
use sealroom_broker::service::{Broker, BrokerParts};
use sealroom_broker::token::Signer;
use sealroom_broker::{ManualClock, Randomness, SystemRandomness};
use sealroom_measurements::cel::RuntimeEvent;
use sealroom_measurements::evidence::{Evidence, Platform};
use sealroom_proto::keybroker::v1 as kpb;
use sealroom_tests::swtpm::{Swtpm, unique_temp_dir};
use sealroom_verifier::azure::hcl::{HW_REPORT_LEN, HW_REPORT_OFFSET};
use sealroom_verifier::snp::report::SnpReport;
use sealroom_verifier::snp::test_pki::TestAmdPki;
use sealroom_verifier::snp::{EndorsementCache, Product, TcbVersion};
use sealroom_verifier::tpm::structures::{Public, PublicKey};
use sealroom_verifier::x509::parse_time;

const KEY_ID: &str = "provider-a/data";
const DATA_KEY: &[u8] = b"the provider's data key";
const IMAGE: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const AT: &str = "2026-12-01T12:00:00Z";
/// Where the IGVM request data (runtime claims) starts in an HCL report.
const IGVM_OFFSET: usize = 0x4C0;

fn now_ms() -> u64 {
    u64::try_from(parse_time(AT).unwrap()).unwrap() * 1000
}

/// Makes the vTPM AK like Azure's paravisor does: an RSA-2048 restricted signing key (RSASSA SHA-256) under
/// the RSA EK, made persistent at 0x81000003. Returns its marshalled TPMT_PUBLIC.
fn provision_azure_ak(tcti: &str) -> Vec<u8> {
    use std::str::FromStr;
    use tss_esapi::abstraction::{ak, ek};
    use tss_esapi::handles::PersistentTpmHandle;
    use tss_esapi::interface_types::algorithm::{
        AsymmetricAlgorithm, HashingAlgorithm, SignatureSchemeAlgorithm,
    };
    use tss_esapi::interface_types::dynamic_handles::Persistent;
    use tss_esapi::interface_types::resource_handles::Provision;
    use tss_esapi::traits::Marshall;
    let mut ctx =
        tss_esapi::Context::new(tss_esapi::tcti_ldr::TctiNameConf::from_str(tcti).unwrap()).unwrap();
    let ekh = ek::create_ek_object(&mut ctx, AsymmetricAlgorithm::Rsa, None).unwrap();
    let k =
        ak::create_ak(&mut ctx, ekh, HashingAlgorithm::Sha256, SignatureSchemeAlgorithm::RsaSsa, None, None)
            .unwrap();
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

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The paravisor's HCL report for a vTPM whose AK is `ak_public`: Azure's real report layout and
/// vm-configuration, the runtime claims naming this AK as HCLAkPub, the SNP report's REPORT_DATA the SHA-256 of
/// the claims, at VMPL 0, signed by a VCEK of `pki`. Returns (HCL report, VCEK DER).
fn hcl_report_for(ak_public: &[u8], pki: &TestAmdPki) -> (Vec<u8>, Vec<u8>) {
    let real = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../verifier/testdata/azure/az-snp-vtpm/hcl-report.bin"
    ))
    .unwrap();
    let PublicKey::Rsa { modulus, exponent } = Public::parse(ak_public).unwrap().key else {
        panic!("RSA AK")
    };
    let exponent = if exponent == 0 { 65_537 } else { exponent };
    let var_len =
        usize::try_from(u32::from_le_bytes(real[IGVM_OFFSET + 16..IGVM_OFFSET + 20].try_into().unwrap()))
            .unwrap();
    let mut claims: serde_json::Value =
        serde_json::from_slice(&real[IGVM_OFFSET + 20..IGVM_OFFSET + 20 + var_len]).unwrap();
    let ak = claims["keys"].as_array_mut().unwrap().iter_mut().find(|k| k["kid"] == "HCLAkPub").unwrap();
    ak["n"] = b64url(&modulus).into();
    ak["e"] = b64url(&exponent.to_be_bytes()[1..]).into();
    let var_data = serde_json::to_vec(&claims).unwrap();

    let mut hcl = real[..IGVM_OFFSET].to_vec();
    let var_size = u32::try_from(var_data.len()).unwrap();
    for field in [var_size + 20, 1, 2, 1, var_size] {
        hcl.extend(field.to_le_bytes()); // data_size, version, report type SNP, hash type SHA-256, var size
    }
    hcl.extend(&var_data);
    hcl.resize(hcl.len().max(real.len()), 0);

    let snp = &mut hcl[HW_REPORT_OFFSET..HW_REPORT_OFFSET + HW_REPORT_LEN];
    snp[0x30..0x34].copy_from_slice(&0u32.to_le_bytes());
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &var_data);
    snp[0x50..0x70].copy_from_slice(digest.as_ref());
    snp[0x70..0x90].fill(0);
    let parsed = SnpReport::parse(snp).unwrap();
    let (vcek, key) =
        pki.issue_vcek(0x5ecc, &TcbVersion::decode(parsed.reported_tcb, false), &parsed.chip_id);
    key.sign_report(snp);
    (hcl, vcek)
}

fn policy(platforms: &str) -> String {
    format!(
        "version = 1\nplatforms = {platforms}\ntcb_statuses = \"skip\"\nminimum_tcb = \"skip\"\n\
         debug = \"forbidden\"\ngolden = \"skip\"\nimage_digests = [\"{IMAGE}\"]\n\
         args = [\"--input=/data/in.parquet\"]\nenv = []\n"
    )
}

/// The provider's broker, in process, trusting only the AMD-like test root for SNP.
fn broker(roots: &TestAmdPki, platforms: &str) -> Broker {
    let dir = unique_temp_dir("azure-broker");
    std::fs::create_dir_all(&dir).unwrap();
    let rng: Arc<dyn Randomness> = Arc::new(SystemRandomness::new());
    let store = Arc::new(
        KeyStore::open(&dir.join("keys.redb"), Kek::from_bytes(&[5; 32]).unwrap(), rng.as_ref()).unwrap(),
    );
    store.add(KEY_ID, "provider-a", &policy(platforms), Some(DATA_KEY.to_vec()), rng.as_ref(), 0).unwrap();
    let appraiser = VerifierAppraiser::default()
        .with_snp_cache(EndorsementCache::with_test_roots(roots.roots()))
        .with_verification_time_ms(now_ms());
    Broker::new(BrokerParts {
        clock: Arc::new(ManualClock::at(now_ms())),
        rng: Arc::clone(&rng),
        appraiser: Arc::new(appraiser),
        store,
        golden: GoldenSet::default(),
        signer: Signer::load_or_create(&dir.join("signing.pk8")).unwrap(),
        nonces: NonceBook::generate(30_000, rng.as_ref()).unwrap(),
        audit: AuditLog::open(&dir.join("audit.log")).unwrap().0,
    })
}

/// The agent's side: the Azure attester on the swtpm vTPM with the HCL report and VCEK, and its runtime log
/// of a launched workload (PCR 15).
fn azure_vm(pki: &TestAmdPki, tpm: &Swtpm) -> (Vec<Box<dyn Attester>>, RuntimeLog) {
    let ak_public = provision_azure_ak(&tpm.tcti());
    let (hcl, vcek) = hcl_report_for(&ak_public, pki);
    let root = unique_temp_dir("azure-root");
    std::fs::create_dir_all(&root).unwrap();
    let mut att =
        AzureVtpmAttester::with_report(connect(&tpm.tcti()).unwrap(), &KernelPaths::new(root), hcl).unwrap();
    att.set_collateral(vcek, Vec::new());
    let mut attesters: Vec<Box<dyn Attester>> = vec![Box::new(att)];
    let mut log = RuntimeLog::open(&unique_temp_dir("azure-rtlog")).unwrap();
    for e in [
        RuntimeEvent::ImageReference(format!("registry.example/analytics@{IMAGE}")),
        RuntimeEvent::ManifestDigest(IMAGE.into()),
        RuntimeEvent::Arg("--input=/data/in.parquet".into()),
        RuntimeEvent::LaunchSeparator,
    ] {
        log.measure(&e, &mut attesters).unwrap();
    }
    (attesters, log)
}

/// Challenge, evidence from the agent's attester bound to the nonce and `key`, release.
fn release(
    broker: &Broker,
    attesters: &mut [Box<dyn Attester>],
    log: &RuntimeLog,
    key: &TeeKey,
) -> Result<Vec<u8>, String> {
    let (nonce, _) = broker.challenge().unwrap();
    let Part::Azure(azure) = attesters[0].attest(&nonce, key.public()).unwrap() else { panic!("not azure") };
    let evidence = Evidence {
        nonce,
        tee_public_key: key.public().clone(),
        platform: Platform::AzureSnpVtpm,
        tpm: None,
        tdx: None,
        sev_snp: None,
        azure: Some(azure),
        runtime_event_log: log.encode(),
        gpus: vec![],
    };
    let r = broker
        .release(kpb::ReleaseRequest {
            nonce: nonce.0.to_vec(),
            evidence: Some(evidence.into()),
            key_ids: vec![KEY_ID.into()],
            tpm_activation: None,
        })
        .unwrap();
    if let Some((_, refused)) = r.refusals.first() {
        return Err(refused.reason.clone());
    }
    let (id, sealed) = &r.keys[0];
    let mut info = b"sealroom.keybroker.v1/key\0".to_vec();
    info.extend(id.as_bytes());
    Ok(key.open(&sealed.encapsulated_key, &info, &sealed.ciphertext, &nonce.0).unwrap())
}

#[test]
fn azure_snp_vtpm_release_with_the_runtime_log_replayed_to_pcr15() {
    let pki = TestAmdPki::new(
        Product::Milan,
        parse_time("2024-01-01T00:00:00Z").unwrap(),
        parse_time("2030-01-01T00:00:00Z").unwrap(),
    );
    let tpm = Swtpm::start().unwrap();
    let (mut attesters, log) = azure_vm(&pki, &tpm);
    let key = TeeKey::generate().unwrap();
    let released = release(&broker(&pki, "[\"azure-snp-vtpm\"]"), &mut attesters, &log, &key).unwrap();
    assert_eq!(released, DATA_KEY);
    // The same VM under a policy for bare TEEs only: refused, naming the platform.
    assert_eq!(
        release(&broker(&pki, "[\"tdx\", \"sev-snp\"]"), &mut attesters, &log, &key).unwrap_err(),
        "policy.platforms: platform azure-snp-vtpm not allowed (allowed: tdx, sev-snp)"
    );
}
