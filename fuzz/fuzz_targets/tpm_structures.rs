//! TPM 2.0 structures: TPMS_ATTEST, TPMT_SIGNATURE, TPMT_PUBLIC, TPML_PCR_SELECTION, and the go-tpm-tools
//! Attestation protobuf. The first byte picks the parser so one corpus covers all.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealroom_verifier::tpm::gce_proto::GceAttestation;
use sealroom_verifier::tpm::structures::{Attest, Public, Signature, parse_pcr_selection};

fuzz_target!(|data: &[u8]| {
    let Some((selector, rest)) = data.split_first() else { return };
    match selector % 5 {
        0 => drop(Attest::parse(rest)),
        1 => drop(Signature::parse(rest)),
        2 => drop(Public::parse(rest)),
        3 => drop(parse_pcr_selection(rest)),
        _ => drop(GceAttestation::decode(rest)),
    }
});
