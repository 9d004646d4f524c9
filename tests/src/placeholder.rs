//! The placeholder release the broker-process tests send (`sealroom broker serve`, embedded or on PostgreSQL):
//! a TPM "quote" the real verifier refuses at its first byte, under a policy for one TPM workload. What those
//! tests exercise is the broker's state (nonces, audit chain, key management, crash safety), never an
//! appraisal, so one definition of the request and of the refusal it earns serves them all.

use sealroom_measurements::binding::{Nonce, TeePublicKey};
use sealroom_measurements::evidence::{Evidence, Platform, TpmEvidence};
use sealroom_proto::keybroker::v1 as pb;

/// A key policy for TPM evidence of one image digest (`sha256:11…`), no TCB or golden checks, any args, no env.
pub const TPM_POLICY: &str = r#"
version = 1
platforms = ["tpm"]
tcb_statuses = "skip"
minimum_tcb = "skip"
debug = "forbidden"
golden = "skip"
image_digests = ["sha256:1111111111111111111111111111111111111111111111111111111111111111"]
args = "skip"
env = []
"#;

/// The verifier's refusal of [`release_request`]'s evidence: its AK public area is empty.
pub const REFUSAL: &str = "verifier: tpmt_public: type at offset 0x0: needs 2 bytes, 0 left";

/// A release request for `key_id` on the broker's challenge `nonce`, bound to `tee`, carrying placeholder TPM
/// evidence that the verifier refuses with [`REFUSAL`].
#[must_use]
pub fn release_request(nonce: Nonce, tee: &TeePublicKey, key_id: &str) -> pb::ReleaseRequest {
    let ev = Evidence {
        nonce,
        tee_public_key: tee.clone(),
        platform: Platform::Tpm,
        tpm: Some(TpmEvidence { attest: b"\xffTCG quote placeholder".to_vec(), ..TpmEvidence::default() }),
        tdx: None,
        sev_snp: None,
        azure: None,
        runtime_event_log: vec![],
        gpus: Vec::new(),
    };
    pb::ReleaseRequest {
        nonce: nonce.0.to_vec(),
        evidence: Some(ev.into()),
        key_ids: vec![key_id.into()],
        tpm_activation: None,
    }
}
