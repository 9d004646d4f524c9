//! A party with its own broker (a data provider, a hospital, a model owner): its own state directory (key
//! store, audit log, signing key), key-encryption key, golden documents, policy files and TLS certificate
//! from its own throwaway CA. It learns nothing of any other party's keys.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use sealroom_tests::tls::{self, ServerTls};

use crate::common::{
    GuestImage, indent, random, sealroom, sealroom_output, sealroom_shown, write, write_secret,
};

pub struct Provider {
    /// The provider's name (a spec's broker name: [a-z0-9-]).
    pub name: String,
    pub dir: PathBuf,
    /// The broker's state directory (keys.redb, audit.log, signing key).
    pub state: PathBuf,
    kek: PathBuf,
    golden_dir: PathBuf,
    pub tls: ServerTls,
    /// Chosen before the VMs boot (their specs name it); the broker starts once it knows a VM's key.
    pub port: u16,
}

/// `sealroom broker serve`, killed by PID on drop.
pub struct BrokerProcess(Child);

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Provider {
    /// A provider in `dir`: its KEK, the image's signed golden document, its TLS certificate (IP 10.0.2.2,
    /// where the VM reaches the host, and 127.0.0.1, where the broker listens) from its own CA.
    pub fn new(dir: &Path, name: &str, image: &GuestImage) -> Result<Self> {
        let golden_dir = dir.join("golden");
        std::fs::create_dir_all(&golden_dir)?;
        std::fs::copy(&image.golden, golden_dir.join("sealroom.json"))?;
        std::fs::copy(&image.golden_sig, golden_dir.join("sealroom.json.sig"))?;
        let kek = dir.join("kek");
        write_secret(&kek, hex::encode(random::<32>()?))?;
        let tls = tls::ca_and_server_cert(
            &dir.join("tls"),
            &format!("{name} broker CA"),
            &["10.0.2.2", "127.0.0.1"],
        )?;
        println!(
            "[demo]   {name}: broker certificate {} from its own CA (the spec carries the CA)",
            tls.cert.display()
        );
        Ok(Self {
            name: name.to_owned(),
            dir: dir.to_path_buf(),
            state: dir.join("broker"),
            kek,
            golden_dir,
            tls,
            port: sealroom_tests::vm::free_port().map_err(anyhow::Error::msg)?,
        })
    }

    /// The broker's signing key id (RFC 7638 thumbprint), created now if the broker never ran.
    pub fn key_id(&self) -> Result<String> {
        let (ok, out) = sealroom_output(&[
            OsStr::new("broker"),
            "key-id".as_ref(),
            "--state-dir".as_ref(),
            self.state.as_os_str(),
        ])?;
        ensure!(ok, "sealroom broker key-id failed:\n{out}");
        Ok(out.trim().to_owned())
    }

    /// The broker's public signing key (JWK), what receipt checkers pin.
    pub fn jwk(&self) -> PathBuf {
        self.state.join("signing-key.jwk.json")
    }

    pub fn audit_log(&self) -> PathBuf {
        self.state.join("audit.log")
    }

    /// `https://10.0.2.2:PORT`, the broker as the VM reaches it.
    pub fn url(&self) -> String {
        format!("https://10.0.2.2:{}", self.port)
    }

    /// Writes `policy` to `policy-ID.toml` (shown) and registers `material` as key `id` under it.
    pub fn add_key(&self, id: &str, owner: &str, policy: &str, material: &Path) -> Result<()> {
        let policy_file = self.dir.join(format!("policy-{id}.toml"));
        write(&policy_file, policy)?;
        println!("[demo]   {}'s policy ({}):\n{}", self.name, policy_file.display(), indent(policy));
        let (ok, out) = sealroom_output(&[
            OsStr::new("broker"),
            "keys".as_ref(),
            "add".as_ref(),
            "--id".as_ref(),
            id.as_ref(),
            "--owner".as_ref(),
            owner.as_ref(),
            "--policy".as_ref(),
            policy_file.as_os_str(),
            "--material-file".as_ref(),
            material.as_os_str(),
            "--state-dir".as_ref(),
            self.state.as_os_str(),
            "--kek".as_ref(),
            self.kek.as_os_str(),
        ])?;
        ensure!(ok, "sealroom broker keys add failed:\n{out}");
        print!("{}", indent(&out));
        Ok(())
    }

    /// Withdraws approval: `sealroom broker keys revoke` (the broker is not running: on the store directly).
    pub fn revoke(&self, id: &str) -> Result<()> {
        let (ok, out) = sealroom_shown(&[
            OsStr::new("broker"),
            "keys".as_ref(),
            "revoke".as_ref(),
            "--id".as_ref(),
            id.as_ref(),
            "--state-dir".as_ref(),
            self.state.as_os_str(),
            "--kek".as_ref(),
            self.kek.as_os_str(),
        ])?;
        ensure!(ok, "sealroom broker keys revoke failed:\n{out}");
        Ok(())
    }

    /// `sealroom broker serve` with TLS on the provider's port, trusting the TPMs of the VMs whose AKs
    /// [`crate::vm_run::enrol`] wrote to `aks` through their EK: `--tpm-ek-ca` with the CA that made each VM's
    /// TPM, so the broker makes a credential for the EK and AK the agent names in `Challenge` and trusts the AK
    /// only once the TPM activated it. The AK files themselves are not given to the broker.
    pub fn serve(&self, aks: &[PathBuf]) -> Result<BrokerProcess> {
        let out = self.dir.join(format!("broker-{}.out", self.port));
        let err = self.dir.join(format!("broker-{}.err", self.port));
        let mut cmd = sealroom()?;
        cmd.args(["broker", "serve", "--listen", &format!("127.0.0.1:{}", self.port), "--state-dir"])
            .arg(&self.state)
            .arg("--kek")
            .arg(&self.kek)
            .arg("--golden")
            .arg(&self.golden_dir)
            .arg("--tls-cert")
            .arg(&self.tls.cert)
            .arg("--tls-key")
            .arg(&self.tls.key);
        for ak in aks {
            cmd.arg("--tpm-ek-ca").arg(crate::vm_run::ek_ca_of(ak));
        }
        let child = cmd
            .stdout(std::fs::File::create(&out)?)
            .stderr(std::fs::File::create(&err)?)
            .stdin(Stdio::null())
            .spawn()
            .context("sealroom broker serve")?;
        let mut broker = BrokerProcess(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(&out).unwrap_or_default().contains("listening on") {
            if let Some(status) = broker.0.try_wait()? {
                bail!(
                    "{}'s broker exited ({status}): {}",
                    self.name,
                    std::fs::read_to_string(&err).unwrap_or_default()
                );
            }
            ensure!(Instant::now() < deadline, "{}'s broker did not start within 30 s", self.name);
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(broker)
    }

    /// The provider's entry in a spec's `brokers` list.
    pub fn spec_entry(&self, key_ids: &[&str]) -> Result<serde_json::Value> {
        Ok(serde_json::json!({
            "name": self.name,
            "url": self.url(),
            "key": self.key_id()?,
            "ca": self.tls.ca_pem,
            "key_ids": key_ids,
        }))
    }

    /// Its policy for a key: the image's signed golden document, the job's image digest and argument list,
    /// and this broker's own key, with `other_brokers` (the other providers' broker keys the job also pins),
    /// as the broker keys the VM may pin.
    pub fn policy(
        &self,
        image: &GuestImage,
        digest: &str,
        argv: &[String],
        other_brokers: &[String],
    ) -> Result<String> {
        let own = self.key_id()?;
        let keys: Vec<&str> =
            std::iter::once(own.as_str()).chain(other_brokers.iter().map(String::as_str)).collect();
        Ok(sealroom_demo::policy_for(
            "\"tpm\"",
            Some((&image.golden_key_hex, &image.doc_ref()?)),
            digest,
            &keys,
            argv,
        ))
    }
}
