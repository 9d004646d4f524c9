//! The evidence model crosses the wire unchanged: encode in one crate, decode through the generated proto.
use prost::Message;
use sealroom_measurements::binding::{Kem, Nonce, TeePublicKey, check_report_data, report_data};
use sealroom_measurements::evidence::{Evidence, Platform, SevSnpEvidence};
use sealroom_proto::attestation::v1 as pb;

#[test]
fn snp_evidence_survives_the_wire_with_its_binding() {
    let nonce = Nonce([0x42; 32]);
    let key = TeePublicKey::new(Kem::X25519HkdfSha256, vec![0x11; 32]).unwrap();
    let mut report = vec![0u8; 1184];
    report[0x50..0x90].copy_from_slice(&report_data(&nonce, &key));
    let ev = Evidence {
        nonce,
        tee_public_key: key.clone(),
        platform: Platform::SevSnp,
        tpm: None,
        tdx: None,
        sev_snp: Some(SevSnpEvidence { report, cert_chain: vec![] }),
        azure: None,
        runtime_event_log: vec![],
        gpus: Vec::new(),
    };
    let wire = pb::Evidence::from(ev.clone()).encode_to_vec();
    let back = Evidence::decode(&wire).unwrap();
    assert_eq!(back, ev);
    let rd = &back.sev_snp.as_ref().unwrap().report[0x50..0x90];
    check_report_data(rd, &back.nonce, &back.tee_public_key).unwrap();
}
