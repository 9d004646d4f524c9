//! An Intel-like DCAP PKI for tests (feature `test-anchors`, never in a release build): a fresh root CA, PCK
//! Platform CA and TCB Signing certificate (ECDSA P-256, as Intel's), PCK leaf certificates carrying the SGX
//! extension the verifier reads (PPID, 16 TCB component SVNs, PCESVN, CPUSVN, PCE-ID, FMSPC, SGX type), a
//! quoting enclave per platform (its report signed by the PCK key and binding an attestation key), TCB info and
//! QE identity JSON signed by the TCB Signing key, root and PCK CRLs, all packed as the `QuoteCollateralV3`
//! JSON [`super::Collateral::add_bytes`] reads, and a TDX v4 quote builder.
//!
//! With [`super::IntelRoot::test_root`] it lets tests sign quotes with chosen TD attributes, MRTD, RTMR0-3 and
//! REPORT_DATA, and show a full release or refusal on TDX without TDX hardware. Everything written here is
//! parsed back by the same parsers and checked by the same code as Intel's real collateral.
#![allow(
    clippy::missing_panics_doc,
    clippy::expect_used,
    reason = "test support: a failure is a broken test"
)]

use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::Engine as _;

use super::quote::INTEL_QE_VENDOR_ID;
use super::tcb::IsvLevel;
use super::{IntelRoot, TcbLevel, TcbStatus};
use crate::test_der::{CertSpec, Profile, SigningKey, extension, oid_der, seq, tlv, uint};
use crate::x509::{Certificate, UnixTime, format_time};

/// The root CA's common name; the collateral loader recognises the root CA CRL by it.
pub const ROOT_CN: &str = "Intel SGX Root CA";
/// The PCK Platform CA's common name.
pub const PCK_CA_CN: &str = "Intel SGX PCK Platform CA";
/// The TCB Signing certificate's common name; TCB infos and QE identities must be signed under it.
pub const TCB_SIGNING_CN: &str = "Intel SGX TCB Signing";
/// The PCK leaf's common name.
pub const PCK_CN: &str = "Intel SGX PCK Certificate";

/// TDATTRIBUTES.DEBUG (bit 0).
pub const TD_ATTR_DEBUG: u64 = 1;
/// TDATTRIBUTES.SEPT_VE_DISABLE (bit 28): what a production TD sets.
pub const TD_ATTR_SEPT_VE_DISABLE: u64 = 1 << 28;

/// The TD QE's MRSIGNER in the test QE identity (Intel's real TD QE signer, so reports look like Intel's).
pub const QE_MRSIGNER: [u8; 32] = [
    0xdc, 0x9e, 0x2a, 0x7c, 0x6f, 0x94, 0x8f, 0x17, 0x47, 0x4e, 0x34, 0xa7, 0xfc, 0x43, 0xed, 0x03, 0x0f,
    0x7c, 0x15, 0x63, 0xf1, 0xba, 0xbd, 0xdf, 0x63, 0x40, 0xc8, 0x2e, 0x0e, 0x54, 0xa8, 0xc5,
];
/// The TD QE's ISVPRODID.
pub const QE_ISVPRODID: u16 = 2;

// ----- keys ---------------------------------------------------------------------------------------------------

/// A P-256 key that signs certificates and CRLs (DER signatures) and quotes, QE reports and collateral JSON
/// (fixed `r || s`).
#[derive(Debug)]
pub struct TestKey(SigningKey);

impl TestKey {
    /// A fresh key.
    #[must_use]
    pub fn generate() -> Self {
        Self(SigningKey::generate(&ECDSA_P256_SHA256_ASN1_SIGNING, &ECDSA_P256_SHA256_FIXED_SIGNING))
    }

    /// The uncompressed SEC1 point (0x04 || X || Y).
    fn public_point(&self) -> Vec<u8> {
        self.0.public_point()
    }

    /// X || Y, as a quote carries its attestation key.
    #[must_use]
    pub fn public_xy(&self) -> [u8; 64] {
        let point = self.public_point();
        point.get(1..65).and_then(|xy| xy.try_into().ok()).expect("uncompressed P-256 point")
    }

    /// ECDSA P-256 SHA-256 over `message`, as 64 bytes `r || s` (DCAP quotes, QE reports, collateral JSON).
    #[must_use]
    pub fn sign_fixed(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign_fixed(message).try_into().expect("64-byte P-256 signature")
    }
}

// ----- certificates and CRLs ----------------------------------------------------------------------------------

/// A distinguished name as Intel writes them (CN, O, L, ST as UTF8String, C as PrintableString), so that a test
/// certificate has the same name bytes as the Intel certificate it stands for and only the key tells them apart.
fn name(cn: &str) -> Vec<u8> {
    let rdn = |oid: &str, tag: u8, value: &str| tlv(0x31, &seq(&[oid_der(oid), tlv(tag, value.as_bytes())]));
    seq(&[
        rdn("2.5.4.3", 0x0c, cn),
        rdn("2.5.4.10", 0x0c, "Intel Corporation"),
        rdn("2.5.4.7", 0x0c, "Santa Clara"),
        rdn("2.5.4.8", 0x0c, "CA"),
        rdn("2.5.4.6", 0x13, "US"),
    ])
}

/// Intel's certificates: P-256, ECDSA with SHA-256, Intel's names, digitalSignature | nonRepudiation on
/// PCK certificates.
const INTEL: Profile = Profile {
    curve_oid: "1.2.840.10045.3.1.7",
    signature_oid: "1.2.840.10045.4.3.2",
    name,
    leaf_key_usage: Some([0x06, 0xc0]),
};

/// PEM of one DER certificate.
fn pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

// ----- the platform's TCB as its PCK certificate states it ----------------------------------------------------

/// What a PCK certificate's SGX extension says about its platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformTcb {
    /// FMSPC: selects the TCB info.
    pub fmspc: [u8; 6],
    /// PCE-ID.
    pub pce_id: [u8; 2],
    /// SGX TCB component SVNs 1..16.
    pub sgx_components: [u8; 16],
    /// PCE SVN.
    pub pce_svn: u16,
    /// CPUSVN.
    pub cpu_svn: [u8; 16],
}

impl PlatformTcb {
    /// The test FMSPC.
    pub const FMSPC: [u8; 6] = [0x00, 0x90, 0x6e, 0xd5, 0x00, 0x00];

    /// A platform at the test collateral's UpToDate level ([`CollateralSpec::standard`]).
    #[must_use]
    pub fn up_to_date() -> Self {
        Self {
            fmspc: Self::FMSPC,
            pce_id: [0, 0],
            sgx_components: [2, 2, 2, 2, 3, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0],
            pce_svn: 11,
            cpu_svn: [2, 2, 2, 2, 3, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0],
        }
    }

    /// A platform whose PCE SVN is only that of the OutOfDate level of [`CollateralSpec::standard`] (a
    /// microcode/PCE update not applied).
    #[must_use]
    pub fn out_of_date() -> Self {
        Self { pce_svn: 5, ..Self::up_to_date() }
    }

    /// The SGX extension (OID 1.2.840.113741.1.13.1) as Intel's PCS writes it into PCK certificates.
    pub(crate) fn sgx_extension(&self, ppid: &[u8; 16]) -> Vec<u8> {
        const SGX: &str = "1.2.840.113741.1.13.1";
        let entry = |oid: String, value: Vec<u8>| seq(&[oid_der(&oid), value]);
        let mut tcb: Vec<Vec<u8>> = self
            .sgx_components
            .iter()
            .enumerate()
            .map(|(i, svn)| entry(format!("{SGX}.2.{}", i + 1), uint(&[*svn])))
            .collect();
        tcb.push(entry(format!("{SGX}.2.17"), uint(&self.pce_svn.to_be_bytes())));
        tcb.push(entry(format!("{SGX}.2.18"), tlv(0x04, &self.cpu_svn)));
        seq(&[
            entry(format!("{SGX}.1"), tlv(0x04, ppid)),
            entry(format!("{SGX}.2"), seq(&tcb)),
            entry(format!("{SGX}.3"), tlv(0x04, &self.pce_id)),
            entry(format!("{SGX}.4"), tlv(0x04, &self.fmspc)),
            // SGX type: ENUMERATED 0 (standard).
            entry(format!("{SGX}.5"), tlv(0x0a, &[0])),
        ])
    }
}

// ----- collateral ---------------------------------------------------------------------------------------------

/// What the test collateral says: validity, the TDX TCB info for one FMSPC and the TD QE identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollateralSpec {
    /// issueDate of the TCB info and QE identity, thisUpdate of the CRLs.
    pub issue_date: UnixTime,
    /// nextUpdate of all of them.
    pub next_update: UnixTime,
    /// FMSPC of the TCB info.
    pub fmspc: [u8; 6],
    /// PCE-ID of the TCB info.
    pub pce_id: [u8; 2],
    /// TCB evaluation data number.
    pub tcb_evaluation_data_number: u32,
    /// Platform levels (any order: the verifier sorts them).
    pub platform_levels: Vec<TcbLevel>,
    /// Levels of the TDX module identity `TDX_01` (the module of [`TdQuoteBody::new`]).
    pub module_levels: Vec<IsvLevel>,
    /// Levels of the TD QE.
    pub qe_levels: Vec<IsvLevel>,
    /// Serials the PCK CRL revokes.
    pub revoked_pcks: Vec<Vec<u8>>,
}

impl CollateralSpec {
    /// A TCB info modelled on Intel's for a 4th-generation Xeon: an UpToDate level at PCE SVN 11 and an
    /// OutOfDate level (advisory INTEL-SA-00837) at PCE SVN 5; module `TDX_01` UpToDate from ISVSVN 4; TD QE
    /// UpToDate from ISVSVN 4. Valid from `issue_date` for 30 days.
    #[must_use]
    pub fn standard(issue_date: UnixTime) -> Self {
        let sgx = PlatformTcb::up_to_date().sgx_components;
        let tdx = [5, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let date = issue_date - 90 * 86_400;
        Self {
            issue_date,
            next_update: issue_date + 30 * 86_400,
            fmspc: PlatformTcb::FMSPC,
            pce_id: [0, 0],
            tcb_evaluation_data_number: 17,
            platform_levels: vec![
                TcbLevel {
                    sgx_components: sgx,
                    pce_svn: 11,
                    tdx_components: Some(tdx),
                    tcb_date: date,
                    status: TcbStatus::UpToDate,
                    advisory_ids: vec![],
                },
                TcbLevel {
                    sgx_components: sgx,
                    pce_svn: 5,
                    tdx_components: Some(tdx),
                    tcb_date: date - 365 * 86_400,
                    status: TcbStatus::OutOfDate,
                    advisory_ids: vec!["INTEL-SA-00837".into()],
                },
            ],
            module_levels: vec![IsvLevel {
                isv_svn: 4,
                tcb_date: date,
                status: TcbStatus::UpToDate,
                advisory_ids: vec![],
            }],
            qe_levels: vec![IsvLevel {
                isv_svn: 4,
                tcb_date: date,
                status: TcbStatus::UpToDate,
                advisory_ids: vec![],
            }],
            revoked_pcks: vec![],
        }
    }

    /// The `tcbInfo` body (the exact bytes that get signed).
    #[must_use]
    pub fn tcb_info_json(&self) -> String {
        let svns = |c: &[u8; 16]| {
            serde_json::json!(c.iter().map(|s| serde_json::json!({"svn": s})).collect::<Vec<_>>())
        };
        let zeros48 = "00".repeat(48);
        serde_json::json!({
            "id": "TDX",
            "version": 3,
            "issueDate": format_time(self.issue_date),
            "nextUpdate": format_time(self.next_update),
            "fmspc": hex::encode_upper(self.fmspc),
            "pceId": hex::encode_upper(self.pce_id),
            "tcbType": 0,
            "tcbEvaluationDataNumber": self.tcb_evaluation_data_number,
            "tdxModule": {"mrsigner": zeros48, "attributes": "0000000000000000", "attributesMask": "FFFFFFFFFFFFFFFF"},
            "tdxModuleIdentities": [{
                "id": "TDX_01", "mrsigner": zeros48, "attributes": "0000000000000000",
                "attributesMask": "FFFFFFFFFFFFFFFF", "tcbLevels": isv_levels_json(&self.module_levels),
            }],
            "tcbLevels": self.platform_levels.iter().map(|l| serde_json::json!({
                "tcb": {"sgxtcbcomponents": svns(&l.sgx_components), "pcesvn": l.pce_svn,
                        "tdxtcbcomponents": l.tdx_components.as_ref().map(svns)},
                "tcbDate": format_time(l.tcb_date),
                "tcbStatus": l.status.as_str(),
                "advisoryIDs": l.advisory_ids,
            })).collect::<Vec<_>>(),
        })
        .to_string()
    }

    /// The `enclaveIdentity` body of the TD QE (the exact bytes that get signed).
    #[must_use]
    pub fn qe_identity_json(&self) -> String {
        serde_json::json!({
            "id": "TD_QE",
            "version": 2,
            "issueDate": format_time(self.issue_date),
            "nextUpdate": format_time(self.next_update),
            "tcbEvaluationDataNumber": self.tcb_evaluation_data_number,
            "miscselect": "00000000",
            "miscselectMask": "FFFFFFFF",
            "attributes": "11000000000000000000000000000000",
            "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
            "mrsigner": hex::encode_upper(QE_MRSIGNER),
            "isvprodid": QE_ISVPRODID,
            "tcbLevels": isv_levels_json(&self.qe_levels),
        })
        .to_string()
    }
}

/// ISVSVN-keyed levels (TDX module identity, QE identity) as Intel's JSON writes them.
fn isv_levels_json(levels: &[IsvLevel]) -> serde_json::Value {
    levels
        .iter()
        .map(|l| {
            serde_json::json!({"tcb": {"isvsvn": l.isv_svn}, "tcbDate": format_time(l.tcb_date),
                "tcbStatus": l.status.as_str(), "advisoryIDs": l.advisory_ids})
        })
        .collect()
}

// ----- the PKI ------------------------------------------------------------------------------------------------

/// An Intel-like DCAP PKI: root CA, PCK Platform CA and TCB Signing certificate.
#[derive(Debug)]
pub struct TestIntelPki {
    root_key: TestKey,
    pck_ca_key: TestKey,
    tcb_signing_key: TestKey,
    root: Vec<u8>,
    pck_ca: Vec<u8>,
    tcb_signing: Vec<u8>,
    not_before: UnixTime,
    not_after: UnixTime,
}

impl TestIntelPki {
    /// A fresh PKI whose certificates are valid from `not_before` to `not_after`.
    #[must_use]
    pub fn new(not_before: UnixTime, not_after: UnixTime) -> Self {
        let (root_key, pck_ca_key, tcb_signing_key) =
            (TestKey::generate(), TestKey::generate(), TestKey::generate());
        let issue = |serial: &[u8], subject: &str, ca: bool, key: &TestKey| {
            let spec =
                CertSpec { serial, issuer: ROOT_CN, subject, not_before, not_after, ca, extra: Vec::new() };
            INTEL.certificate(&spec, &key.0, &root_key.0)
        };
        let root = issue(&[1], ROOT_CN, true, &root_key);
        let pck_ca = issue(&[2], PCK_CA_CN, true, &pck_ca_key);
        let tcb_signing = issue(&[3], TCB_SIGNING_CN, false, &tcb_signing_key);
        Self { root_key, pck_ca_key, tcb_signing_key, root, pck_ca, tcb_signing, not_before, not_after }
    }

    /// The trust anchor to verify collateral and quotes under ([`super::Collateral::verify_under`],
    /// [`super::verify_quote_signatures_under`]).
    #[must_use]
    pub fn root(&self) -> IntelRoot {
        IntelRoot::test_root(Certificate::from_der(&self.root).expect("test root parses"))
    }

    /// The root CA certificate, DER.
    #[must_use]
    pub fn root_der(&self) -> &[u8] {
        &self.root
    }

    /// The PCK CA's serial (as the root CA CRL would list it).
    #[must_use]
    pub fn pck_ca_serial(&self) -> Vec<u8> {
        Certificate::from_der(&self.pck_ca).expect("test certificate parses").serial().to_vec()
    }

    /// The root CA CRL (revokes intermediate CAs).
    #[must_use]
    pub fn root_crl(&self, revoked: &[&[u8]], this_update: UnixTime, next_update: UnixTime) -> Vec<u8> {
        INTEL.crl(ROOT_CN, &self.root_key.0, revoked, this_update, next_update)
    }

    /// The PCK Platform CA's CRL (revokes PCK certificates).
    #[must_use]
    pub fn pck_crl(&self, revoked: &[&[u8]], this_update: UnixTime, next_update: UnixTime) -> Vec<u8> {
        INTEL.crl(PCK_CA_CN, &self.pck_ca_key.0, revoked, this_update, next_update)
    }

    /// Signs a collateral JSON body (TCB info or QE identity) with the TCB Signing key: hex of `r || s`.
    #[must_use]
    pub fn sign_json(&self, body: &str) -> String {
        hex::encode(self.tcb_signing_key.sign_fixed(body.as_bytes()))
    }

    /// The collateral `spec` describes as dcap-qvl's `QuoteCollateralV3` JSON (what `--collateral` files and
    /// [`super::Collateral::add_bytes`] read): CRLs as hex DER, issuer chains as PEM, signed JSON bodies.
    #[must_use]
    pub fn collateral_json(&self, spec: &CollateralSpec) -> Vec<u8> {
        let revoked: Vec<&[u8]> = spec.revoked_pcks.iter().map(Vec::as_slice).collect();
        let tcb_info = spec.tcb_info_json();
        let qe_identity = spec.qe_identity_json();
        let signing_chain = format!("{}{}", pem(&self.tcb_signing), pem(&self.root));
        serde_json::json!({
            "pck_crl_issuer_chain": format!("{}{}", pem(&self.pck_ca), pem(&self.root)),
            "root_ca_crl": hex::encode(self.root_crl(&[], spec.issue_date, spec.next_update)),
            "pck_crl": hex::encode(self.pck_crl(&revoked, spec.issue_date, spec.next_update)),
            "tcb_info_issuer_chain": signing_chain,
            "tcb_info_signature": self.sign_json(&tcb_info),
            "tcb_info": tcb_info,
            "qe_identity_issuer_chain": signing_chain,
            "qe_identity_signature": self.sign_json(&qe_identity),
            "qe_identity": qe_identity,
        })
        .to_string()
        .into_bytes()
    }

    /// A platform: a PCK certificate (serial `serial`) stating `tcb`, issued by the PCK Platform CA, and its
    /// quoting enclave at ISVSVN `qe_isv_svn` with a fresh attestation key.
    #[must_use]
    pub fn issue_platform(&self, serial: &[u8], tcb: &PlatformTcb, qe_isv_svn: u16) -> TestPlatform {
        let pck_key = TestKey::generate();
        let mut ppid = [0u8; 16];
        for (dst, src) in ppid.iter_mut().zip(serial.iter().cycle()) {
            *dst = *src;
        }
        let spec = CertSpec {
            serial,
            issuer: PCK_CA_CN,
            subject: PCK_CN,
            not_before: self.not_before,
            not_after: self.not_after,
            ca: false,
            extra: vec![extension("1.2.840.113741.1.13.1", false, &tcb.sgx_extension(&ppid))],
        };
        let pck = INTEL.certificate(&spec, &pck_key.0, &self.pck_ca_key.0);
        let chain_pem = format!("{}{}{}", pem(&pck), pem(&self.pck_ca), pem(&self.root));
        TestPlatform {
            pck_serial: serial.to_vec(),
            pck_key,
            attestation_key: TestKey::generate(),
            qe_isv_svn,
            qe_cpu_svn: tcb.cpu_svn,
            pce_svn: tcb.pce_svn,
            chain_pem,
        }
    }
}

// ----- platforms and quotes -----------------------------------------------------------------------------------

/// One TDX platform: PCK certificate and key, and its quoting enclave's attestation key.
#[derive(Debug)]
pub struct TestPlatform {
    /// The PCK certificate's serial.
    pub pck_serial: Vec<u8>,
    pck_key: TestKey,
    attestation_key: TestKey,
    qe_isv_svn: u16,
    qe_cpu_svn: [u8; 16],
    pce_svn: u16,
    chain_pem: String,
}

/// The TD report fields a quote states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdQuoteBody {
    /// TEE_TCB_SVN (byte 0 module ISVSVN, byte 1 module major version, then TDX components).
    pub tee_tcb_svn: [u8; 16],
    /// MRSEAM.
    pub mr_seam: [u8; 48],
    /// MRSIGNERSEAM (zero: Intel's module).
    pub mr_signer_seam: [u8; 48],
    /// SEAMATTRIBUTES.
    pub seam_attributes: [u8; 8],
    /// TDATTRIBUTES (see [`TD_ATTR_DEBUG`], [`TD_ATTR_SEPT_VE_DISABLE`]).
    pub td_attributes: u64,
    /// XFAM.
    pub xfam: [u8; 8],
    /// MRTD.
    pub mr_td: [u8; 48],
    /// MRCONFIGID.
    pub mr_config_id: [u8; 48],
    /// MROWNER.
    pub mr_owner: [u8; 48],
    /// MROWNERCONFIG.
    pub mr_owner_config: [u8; 48],
    /// RTMR0..3.
    pub rtmr: [[u8; 48]; 4],
    /// REPORTDATA.
    pub report_data: [u8; 64],
}

impl TdQuoteBody {
    /// A production-like TD (SEPT_VE_DISABLE only, module TDX_01 ISVSVN 4, TDX components at the levels of
    /// [`CollateralSpec::standard`]) with the given measurements and REPORT_DATA.
    #[must_use]
    pub fn new(mr_td: [u8; 48], rtmr: [[u8; 48]; 4], report_data: [u8; 64]) -> Self {
        Self {
            tee_tcb_svn: [4, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            mr_seam: [0x5e; 48],
            mr_signer_seam: [0; 48],
            seam_attributes: [0; 8],
            td_attributes: TD_ATTR_SEPT_VE_DISABLE,
            xfam: [0xe7, 0x02, 0x06, 0, 0, 0, 0, 0],
            mr_td,
            mr_config_id: [0; 48],
            mr_owner: [0; 48],
            mr_owner_config: [0; 48],
            rtmr,
            report_data,
        }
    }

    fn encode(&self) -> Vec<u8> {
        [
            &self.tee_tcb_svn[..],
            &self.mr_seam,
            &self.mr_signer_seam,
            &self.seam_attributes,
            &self.td_attributes.to_le_bytes(),
            &self.xfam,
            &self.mr_td,
            &self.mr_config_id,
            &self.mr_owner,
            &self.mr_owner_config,
            &self.rtmr[0],
            &self.rtmr[1],
            &self.rtmr[2],
            &self.rtmr[3],
            &self.report_data,
        ]
        .concat()
    }
}

fn u16le(v: u16) -> [u8; 2] {
    v.to_le_bytes()
}

fn u32le(len: usize) -> [u8; 4] {
    u32::try_from(len).expect("length fits u32").to_le_bytes()
}

impl TestPlatform {
    /// The QE's enclave report (384 bytes): the TD QE's identity, REPORTDATA = SHA-256(attestation key ||
    /// `auth_data`) || 0^32.
    fn qe_report(&self, auth_data: &[u8]) -> Vec<u8> {
        let mut binding = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        binding.update(&self.attestation_key.public_xy());
        binding.update(auth_data);
        let mut report_data = binding.finish().as_ref().to_vec();
        report_data.resize(64, 0);
        let mut attributes = [0u8; 16];
        attributes[0] = 0x11;
        [
            &self.qe_cpu_svn[..],
            &0u32.to_le_bytes(),
            &[0; 28],
            &attributes,
            &[0x9e; 32], // MRENCLAVE
            &[0; 32],
            &QE_MRSIGNER,
            &[0; 96],
            &u16le(QE_ISVPRODID),
            &u16le(self.qe_isv_svn),
            &[0; 60],
            &report_data,
        ]
        .concat()
    }

    /// A TDX v4 quote of `body`: header and body signed by the attestation key, the QE report signed by the
    /// PCK key, certification data type 5 (PCK leaf, PCK CA, root as PEM) inside type 6 (QE report).
    #[must_use]
    pub fn quote(&self, body: &TdQuoteBody) -> Vec<u8> {
        let mut signed = Vec::new();
        signed.extend(u16le(4)); // version
        signed.extend(u16le(2)); // ECDSA-256 with P-256
        signed.extend(0x81u32.to_le_bytes()); // TDX
        signed.extend(u16le(self.qe_isv_svn));
        signed.extend(u16le(self.pce_svn));
        signed.extend(INTEL_QE_VENDOR_ID);
        signed.extend([0u8; 20]);
        signed.extend(body.encode());

        let auth_data: Vec<u8> = (0u8..32).collect();
        let qe_report = self.qe_report(&auth_data);
        let mut qe_cert_data = qe_report.clone();
        qe_cert_data.extend(self.pck_key.sign_fixed(&qe_report));
        qe_cert_data.extend(u16le(u16::try_from(auth_data.len()).expect("auth data")));
        qe_cert_data.extend(&auth_data);
        qe_cert_data.extend(u16le(5));
        qe_cert_data.extend(u32le(self.chain_pem.len()));
        qe_cert_data.extend(self.chain_pem.as_bytes());

        let mut sig_data = self.attestation_key.sign_fixed(&signed).to_vec();
        sig_data.extend(self.attestation_key.public_xy());
        sig_data.extend(u16le(6));
        sig_data.extend(u32le(qe_cert_data.len()));
        sig_data.extend(qe_cert_data);

        let mut quote = signed;
        quote.extend(u32le(sig_data.len()));
        quote.extend(sig_data);
        quote
    }
}
