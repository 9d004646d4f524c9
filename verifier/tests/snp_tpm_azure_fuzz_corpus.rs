//! Replays the checked-in fuzz corpora of the SEV-SNP, TPM (structures, EK certificates), Azure HCL and AMD certificate parsers (and
//! simple mutations: every truncation, byte flips) through the same entry points as the fuzz targets, so CI
//! proves no corpus input panics. Results are Ok or Err; only a panic fails.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

#[path = "common/corpus.rs"]
mod common_corpus;

use common_corpus::{corpus, mutations};

use sealroom_verifier::azure::evidence::AzureEvidence;
use sealroom_verifier::azure::hcl::{HclReport, RuntimeClaims};
use sealroom_verifier::snp::endorsement::{endorsed_tcb, verify_endorsement};
use sealroom_verifier::snp::report::SnpReport;
use sealroom_verifier::snp::{Collateral, EndorsementCache, Product, SnpPolicy, verify_report};
use sealroom_verifier::tpm::credential::make_credential;
use sealroom_verifier::tpm::ek::EkCertificate;
use sealroom_verifier::tpm::gce_proto::GceAttestation;
use sealroom_verifier::tpm::structures::{Attest, Public, Signature, parse_pcr_selection};
use sealroom_verifier::x509::Certificate;

const VCEK: &[u8] = include_bytes!("../testdata/snp/trustee/test-vcek.der");

#[test]
fn snp_report_corpus() {
    let cache = EndorsementCache::default();
    for input in corpus("snp_report") {
        for m in mutations(&input) {
            let _ = SnpReport::parse(&m);
            let _ = verify_report(
                &m,
                Collateral { endorsement_der: VCEK },
                &cache,
                &SnpPolicy::default(),
                1_704_067_200,
            );
        }
    }
}

#[test]
fn tpm_structures_corpus() {
    for input in corpus("tpm_structures") {
        for m in mutations(&input) {
            let Some((selector, rest)) = m.split_first() else { continue };
            match selector % 5 {
                0 => drop(Attest::parse(rest)),
                1 => drop(Signature::parse(rest)),
                2 => drop(Public::parse(rest)),
                3 => drop(parse_pcr_selection(rest)),
                _ => drop(GceAttestation::decode(rest)),
            }
        }
    }
}

/// The fuzz target's AK: a restricted RSA signing key's TPMT_PUBLIC (2048-bit modulus of 0x5a bytes).
fn fuzz_ak() -> Vec<u8> {
    let mut p = vec![0x00, 0x01, 0x00, 0x0b, 0x00, 0x05, 0x00, 0x72, 0x00, 0x00, 0x00, 0x10];
    p.extend_from_slice(&[0x00, 0x14, 0x00, 0x0b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00]);
    p.extend(std::iter::repeat_n(0x5a, 256));
    p
}

#[test]
fn tpm_ek_certificate_corpus() {
    assert!(
        Public::parse(&fuzz_ak()).unwrap().is_attestation_key(),
        "the fuzz AK must reach the credential code"
    );
    let mut made = 0;
    for input in corpus("tpm_ek_certificate") {
        for m in mutations(&input) {
            if let Ok(ek) = EkCertificate::parse(&m)
                && make_credential(ek.key(), &fuzz_ak(), &[1; 32]).is_ok()
            {
                made += 1;
            }
        }
    }
    assert!(made >= 4, "every unmutated corpus certificate makes a credential ({made})");
}

#[test]
fn hcl_report_corpus() {
    for input in corpus("hcl_report") {
        for m in mutations(&input) {
            if let Ok(r) = HclReport::parse(&m) {
                let _ = r.check_var_data_binding();
                let _ = RuntimeClaims::parse(&r.var_data);
            }
            let _ = AzureEvidence::parse_json(&m);
        }
    }
}

#[test]
fn amd_cert_chain_corpus() {
    for input in corpus("amd_cert_chain") {
        for m in mutations(&input) {
            if let Ok(c) = Certificate::from_der(&m) {
                let _ = endorsed_tcb(&c, Product::Milan);
                let _ = endorsed_tcb(&c, Product::Turin);
            }
            let _ = verify_endorsement(&m);
        }
    }
}

#[test]
fn corpus_seeds_are_accepted_by_their_parsers() {
    // The seeds are real structures: each parses (so the fuzzer starts from valid inputs).
    for r in corpus("snp_report") {
        SnpReport::parse(&r).unwrap();
    }
    for h in corpus("hcl_report").iter().filter(|h| h.starts_with(b"HCLA")) {
        HclReport::parse(h).unwrap();
    }
    for c in corpus("amd_cert_chain") {
        Certificate::from_der(&c).unwrap();
    }
    for t in corpus("tpm_structures") {
        let (s, rest) = t.split_first().unwrap();
        let ok = match s % 5 {
            0 => Attest::parse(rest).is_ok(),
            1 => Signature::parse(rest).is_ok(),
            2 => Public::parse(rest).is_ok(),
            3 => parse_pcr_selection(rest).is_ok(),
            _ => GceAttestation::decode(rest).is_ok(),
        };
        assert!(ok, "seed with selector {s} does not parse");
    }
}
