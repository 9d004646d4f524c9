//! Azure confidential VMs (SEV-SNP and TDX) whose evidence comes through the paravisor: the HCL report binds
//! the vTPM attestation key to the hardware report; the vTPM quote then proves PCRs and the nonce.

pub mod evidence;
pub mod hcl;
pub mod verify;
