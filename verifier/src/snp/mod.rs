//! AMD SEV-SNP: attestation reports, the VCEK/VLEK → ASK/ASVK → ARK chain, TCB and guest policy.

pub mod endorsement;
pub mod report;
#[cfg(any(test, feature = "test-anchors"))]
pub mod test_pki;
pub mod verify;

pub use endorsement::{AmdCrl, AmdRoot, EndorsementCache, KeyKind, Product};
pub use report::{SnpReport, TcbVersion};
pub use verify::{Collateral, SnpClaims, SnpOutcome, SnpPolicy, verify_report, verify_report_detailed};
