//! `sealroom-demo`: the seed scenario end to end on this machine, every part real (what `ci/demo` runs).
//!
//! 1. The researcher's job (a static binary, `sealroom-demo-job`) is built and packed into an OCI image; a
//!    modified variant (one extra file, hence another digest) too. Both go to a loopback `docker-registry`.
//! 2. The data provider seals the diabetes table (scikit-learn's copy) with a fresh AES-256-GCM data key onto a
//!    raw data disk, and registers the key with `sealroom broker keys add` under a policy: the image's signed
//!    golden document (its boot registers), the approved job's image digest, its fixed args and env.
//! 3. Approved run: the built guest image boots under QEMU (TCG + OVMF + swtpm) with three virtio disks: the
//!    operator's workload spec (`sealroom-workload`), the data disk (`sealroom-data`), an empty output disk
//!    (`sealroom-output`). The provider enrols the VM's TPM attestation key and starts `sealroom broker serve`
//!    with TLS (a throwaway CA made by `openssl` for this run; the spec says `https://` and carries the CA as
//!    `broker_ca`, so the agent trusts that broker only) (the agent retries the broker meanwhile). The agent measures the job, obtains the key with evidence,
//!    runs the job, measures its output, obtains the output receipt, writes the result onto the output disk
//!    and powers off. The host unpacks the disk and checks it with `sealroom verify-receipt`.
//! 4. Refusal run: the same with the modified job on a fresh VM: the broker refuses the key with the policy's
//!    reason, the job never runs; the console line and the broker's audit record say why.
//!
//! Exit status: 0 when the approved run's receipt verified and the modified job was refused for the policy
//! reason (`--only approved`: 0 when verified; `--only modified`: the refusal run alone, exit status 1 when it
//! was refused, as a user would see it). Progress: one line per step with its time.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use sealroom_demo::{INPUT_NAME, KEY_ID, job_image, policy, seal_dataset};
use sealroom_proto::attestation::v1 as apb;
use sealroom_tests::registry::Registry;
use sealroom_tests::tls::{self, ServerTls};
use sealroom_tests::vm::{self, Vm};

const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
const RUN_TIMEOUT: Duration = Duration::from_secs(900);
const DATA_SERIAL: &str = "sealroom-data";
const OUTPUT_SERIAL: &str = "sealroom-output";
const OUTPUT_DISK_BYTES: u64 = 16 << 20;
const REFUSAL_MARKER: &str = "sealroom-workload: REFUSED/FAILED:";
const RECEIPT_WRITTEN: &str = "sealroom-workload: receipt: result (";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Only {
    /// The approved job only.
    Approved,
    /// The modified job only.
    Modified,
}

/// The seed demo: a research job whose data key is released only to approved code, with an output receipt.
#[derive(Debug, clap::Parser)]
struct Args {
    /// The built guest image (disk.raw, golden.json, golden.json.sig), as `ci/image` writes it.
    #[arg(long, default_value_os_t = vm::image_dir())]
    image_dir: PathBuf,
    /// The golden document's signer: the PKCS#8 signing key `ci/image --golden-key` used (its public key is
    /// derived), or a hex public key.
    #[arg(long, default_value_os_t = sealroom_tests::repo_root().join("target/image/ci-test-key.pk8"))]
    golden_key: PathBuf,
    /// Working directory (replaced on each run); the approved run's result is left in WORK/result.
    #[arg(long, default_value_os_t = sealroom_tests::repo_root().join("target/demo"))]
    work: PathBuf,
    /// Run one of the two runs only.
    #[arg(long)]
    only: Option<Only>,
}

fn main() -> std::process::ExitCode {
    let args = <Args as clap::Parser>::parse();
    let started = Instant::now();
    let result = run(&args);
    let total = started.elapsed().as_secs_f64();
    match result {
        Ok(code) => {
            println!("[demo] total wall time {total:.1} s");
            code
        }
        Err(e) => {
            println!("[demo] FAILED after {total:.1} s: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Runs `f` as one visible step with its duration.
fn step<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    println!("[demo] {name}");
    let _ = std::io::stdout().flush();
    let t = Instant::now();
    let r = f();
    let how = if r.is_ok() { "done" } else { "FAILED" };
    println!("[demo]   {how} in {:.1} s", t.elapsed().as_secs_f64());
    r
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref())
}

fn write(path: &Path, bytes: impl AsRef<[u8]>) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// The `sealroom` binary next to this one (both built by `ci/demo`), or `$SEALROOM_BIN`.
fn sealroom() -> Result<Command> {
    let bin = match std::env::var_os("SEALROOM_BIN") {
        Some(b) => PathBuf::from(b),
        None => std::env::current_exe()?.with_file_name("sealroom"),
    };
    ensure!(bin.exists(), "{} missing: build it (cargo build -p sealroom-cli --bin sealroom)", bin.display());
    let mut cmd = Command::new(bin);
    // Its refusals are one line; no anyhow backtrace even when RUST_BACKTRACE is set.
    cmd.env("RUST_LIB_BACKTRACE", "0");
    Ok(cmd)
}

/// Runs a `sealroom` command; returns (success, stdout + stderr).
fn sealroom_output(args: &[&std::ffi::OsStr]) -> Result<(bool, String)> {
    let out = sealroom()?.args(args).output().context("running sealroom")?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("         {l}\n")).collect()
}

/// The golden signer's public key (hex): derived from a PKCS#8 signing key file, or the hex itself.
fn golden_public_key(key: &Path) -> Result<String> {
    let s = key.to_string_lossy();
    if s.len() == 64 && s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Ok(s.into_owned());
    }
    let pkcs8 =
        std::fs::read(key).with_context(|| format!("reading the golden signing key {}", key.display()))?;
    let pair = aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8(&pkcs8)
        .map_err(|e| anyhow::anyhow!("{}: not an Ed25519 PKCS#8 key: {e}", key.display()))?;
    Ok(hex::encode(aws_lc_rs::signature::KeyPair::public_key(&pair).as_ref()))
}

/// What the data provider and the researcher prepared, shared by both runs.
struct Prepared {
    work: PathBuf,
    disk: PathBuf,
    golden: PathBuf,
    golden_key_hex: String,
    registry: Registry,
    approved_ref: String,
    modified_ref: String,
    modified_digest: String,
    data_disk: PathBuf,
    state: PathBuf,
    kek: PathBuf,
    golden_dir: PathBuf,
    /// Chosen before the VMs boot (their specs name it); the broker starts once it knows a VM's key.
    broker_port: u16,
    /// The broker's TLS certificate and key, and the CA the spec names as `broker_ca`.
    tls: ServerTls,
}

fn run(args: &Args) -> Result<std::process::ExitCode> {
    println!(
        "[demo] sealroom seed demo: a research job on sealed data; the key is released only to approved code\n\
         [demo] image {}; work {}",
        args.image_dir.display(),
        args.work.display()
    );
    let p = prepare(args)?;
    let approved = match args.only {
        Some(Only::Modified) => None,
        _ => Some(approved_run(&p)?),
    };
    let refused = match args.only {
        Some(Only::Approved) => None,
        _ => Some(modified_run(&p)?),
    };
    println!("[demo] summary");
    if let Some(a) = &approved {
        println!("[demo]   approved job: receipt verified, result in {}", a.display());
    }
    if let Some(reason) = &refused {
        println!("[demo]   modified job: no key (exit status 1): {reason}");
    }
    Ok(match args.only {
        // The refusal run on its own fails, as it does for its user.
        Some(Only::Modified) => std::process::ExitCode::from(1),
        _ => std::process::ExitCode::SUCCESS,
    })
}

fn prepare(args: &Args) -> Result<Prepared> {
    let disk = args.image_dir.join("disk.raw");
    let golden = args.image_dir.join("golden.json");
    for f in [&disk, &golden, &args.image_dir.join("golden.json.sig")] {
        ensure!(
            f.exists(),
            "{} missing: build the image with a golden document (ci/image --golden-key …)",
            f.display()
        );
    }
    let golden_key_hex = golden_public_key(&args.golden_key)?;
    let sig = std::fs::read_to_string(args.image_dir.join("golden.json.sig"))?;
    sealroom_measurements::golden::verify(&std::fs::read(&golden)?, sig.trim(), &golden_key_hex).map_err(|e| {
        anyhow::anyhow!(
            "{} is not signed by {golden_key_hex} ({e}): rebuild the image with that key (ci/demo --rebuild-image)",
            golden.display()
        )
    })?;
    let work = args.work.clone();
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;

    let job = step("researcher: build the job (static Rust binary, ridge regression)", || {
        sealroom_demo::build_job_binary().map_err(anyhow::Error::msg)
    })?;
    let (registry, approved, modified) =
        step("researcher: job images (approved + modified) into a loopback docker-registry", || {
            let registry = Registry::start().map_err(anyhow::Error::msg)?;
            let approved = job_image(&job, None)?;
            let modified = job_image(&job, Some("modified"))?;
            registry.push("research/diabetes-ridge", "v1", &approved).map_err(anyhow::Error::msg)?;
            registry.push("research/diabetes-ridge", "v2", &modified).map_err(anyhow::Error::msg)?;
            println!("[demo]   approved {}", approved.manifest_digest());
            println!("[demo]   modified {}", modified.manifest_digest());
            Ok((registry, approved, modified))
        })?;
    // The guest reaches the host's loopback at 10.0.2.2 (QEMU user networking).
    let guest_ref = |digest: &str| format!("10.0.2.2:{}/research/diabetes-ridge@{digest}", registry.port());

    let data_key_file = work.join("provider/data.key");
    let data_disk = work.join("provider/data.raw");
    step("data provider: seal the diabetes table with a fresh data key onto a data disk", || {
        std::fs::create_dir_all(work.join("provider"))?;
        let mut key = [0u8; 32];
        sealroom_demo::random(&mut key)?;
        let mut nonce = [0u8; 12];
        sealroom_demo::random(&mut nonce)?;
        let plain = sealroom_demo::dataset()?;
        let mut sealed = seal_dataset(&plain, &key, nonce).map_err(anyhow::Error::msg)?;
        ensure!(!sealed.windows(32).any(|w| plain.starts_with(w)), "the sealed disk holds plaintext");
        sealed.resize(sealed.len().next_multiple_of(4096) + 4096, 0);
        write(&data_disk, &sealed)?;
        write(&data_key_file, key)?;
        std::fs::set_permissions(&data_key_file, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        println!(
            "[demo]   {} rows ({} bytes, sha256 {}…) sealed into {} ({} bytes)",
            plain.iter().filter(|b| **b == b'\n').count(),
            plain.len(),
            sha256_hex(&plain).get(..16).unwrap_or_default(),
            data_disk.display(),
            sealed.len()
        );
        Ok(())
    })?;

    let tls = step("data provider: a throwaway CA and the broker's TLS certificate (openssl)", || {
        // 10.0.2.2: where the VM reaches the host (QEMU user networking); 127.0.0.1: where the broker listens.
        let tls = tls::ca_and_server_cert(
            &work.join("provider/tls"),
            "sealroom demo broker CA",
            &["10.0.2.2", "127.0.0.1"],
        )?;
        println!(
            "[demo]   broker certificate {} (IP 10.0.2.2, 127.0.0.1); the spec carries the CA",
            tls.cert.display()
        );
        Ok(tls)
    })?;
    let state = work.join("broker");
    let kek = work.join("provider/kek");
    let golden_dir = work.join("provider/golden");
    step("data provider: register the key in sealroom broker with the policy", || {
        std::fs::create_dir_all(&golden_dir)?;
        let doc = std::fs::read(&golden)?;
        std::fs::copy(&golden, golden_dir.join("sealroom.json"))?;
        std::fs::copy(args.image_dir.join("golden.json.sig"), golden_dir.join("sealroom.json.sig"))?;
        let mut k = [0u8; 32];
        sealroom_demo::random(&mut k)?;
        write(&kek, hex::encode(k))?;
        std::fs::set_permissions(&kek, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        let doc_ref = format!("sha256:{}", sha256_hex(&doc));
        // The provider requires that the VM pins this broker's own signing key (measured at launch).
        let broker_key = broker_key_id(&state)?;
        let policy_text = policy(
            "\"tpm\"",
            Some((&golden_key_hex, &doc_ref)),
            &approved.manifest_digest(),
            Some(&broker_key),
        );
        let policy_file = work.join("provider/policy.toml");
        write(&policy_file, &policy_text)?;
        println!("[demo]   policy ({}):\n{}", policy_file.display(), indent(&policy_text));
        let (ok, out) = sealroom_output(&[
            "broker".as_ref(),
            "keys".as_ref(),
            "add".as_ref(),
            "--id".as_ref(),
            KEY_ID.as_ref(),
            "--owner".as_ref(),
            "diabetes-provider".as_ref(),
            "--policy".as_ref(),
            policy_file.as_os_str(),
            "--material-file".as_ref(),
            data_key_file.as_os_str(),
            "--state-dir".as_ref(),
            state.as_os_str(),
            "--kek".as_ref(),
            kek.as_os_str(),
        ])?;
        ensure!(ok, "sealroom broker keys add failed:\n{out}");
        print!("{}", indent(&out));
        Ok(())
    })?;
    Ok(Prepared {
        approved_ref: guest_ref(&approved.manifest_digest()),
        modified_ref: guest_ref(&modified.manifest_digest()),
        modified_digest: modified.manifest_digest(),
        work,
        disk,
        golden,
        golden_key_hex,
        registry,
        data_disk,
        state,
        kek,
        golden_dir,
        broker_port: vm::free_port().map_err(anyhow::Error::msg)?,
        tls,
    })
}

/// `sealroom broker serve` on a fixed port, with the enrolled AKs; killed by PID on drop.
struct BrokerProcess(Child);

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_broker(p: &Prepared, port: u16, aks: &[PathBuf]) -> Result<BrokerProcess> {
    let out = p.work.join(format!("broker-{port}.out"));
    let mut cmd = sealroom()?;
    cmd.args(["broker", "serve", "--listen", &format!("127.0.0.1:{port}"), "--state-dir"])
        .arg(&p.state)
        .arg("--kek")
        .arg(&p.kek)
        .arg("--golden")
        .arg(&p.golden_dir)
        .arg("--tls-cert")
        .arg(&p.tls.cert)
        .arg("--tls-key")
        .arg(&p.tls.key);
    for ak in aks {
        cmd.arg("--tpm-ak").arg(ak);
    }
    let child = cmd
        .stdout(std::fs::File::create(&out)?)
        .stderr(std::fs::File::create(p.work.join(format!("broker-{port}.err")))?)
        .stdin(Stdio::null())
        .spawn()
        .context("sealroom broker serve")?;
    let mut broker = BrokerProcess(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&out).unwrap_or_default().contains("listening on") {
        if let Some(status) = broker.0.try_wait()? {
            let err = std::fs::read_to_string(p.work.join(format!("broker-{port}.err"))).unwrap_or_default();
            bail!("the broker exited ({status}): {err}");
        }
        ensure!(Instant::now() < deadline, "the broker did not start within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(broker)
}

/// The operator's config disk: the spec JSON, NUL-padded to whole sectors.
fn spec_disk(path: &Path, spec: &serde_json::Value) -> Result<()> {
    let mut bytes = serde_json::to_vec(spec)?;
    bytes.resize(bytes.len().div_ceil(4096) * 4096, 0);
    write(path, bytes)
}

/// The broker's signing key id (RFC 7638 thumbprint) in `state`, created now if the broker never ran.
fn broker_key_id(state: &Path) -> Result<String> {
    let (ok, out) =
        sealroom_output(&["broker".as_ref(), "key-id".as_ref(), "--state-dir".as_ref(), state.as_os_str()])?;
    ensure!(ok, "sealroom broker key-id failed:\n{out}");
    Ok(out.trim().to_owned())
}

/// Boots the image with the spec for `reference`, the data disk and (when given) an output disk.
fn boot(p: &Prepared, tag: &str, reference: &str, broker_port: u16, output: Option<&Path>) -> Result<Vm> {
    // The broker's signing key (created now if the broker never ran) is pinned in the spec and measured: the
    // agent accepts only releases and receipts signed by it.
    let broker_key = broker_key_id(&p.state)?;
    let spec = serde_json::json!({
        "image": reference,
        "insecure_registries": [format!("10.0.2.2:{}", p.registry.port())],
        "log_redirect": true,
        "broker": format!("https://10.0.2.2:{broker_port}"),
        "broker_key": broker_key,
        "broker_ca": p.tls.ca_pem,
        "key_ids": [KEY_ID],
        "inputs": { INPUT_NAME: format!("serial:{DATA_SERIAL}") },
        "on_exit": "poweroff",
    });
    let spec_path = p.work.join(format!("{tag}-spec.img"));
    spec_disk(&spec_path, &spec)?;
    write(&p.work.join(format!("{tag}-spec.json")), serde_json::to_string_pretty(&spec)?)?;
    // PCI slots after the boot disk, so that OVMF does not try to boot from these disks first.
    let mut extra = vec![
        "-drive".to_owned(),
        format!("if=none,id=spec,format=raw,readonly=on,file={}", spec_path.display()),
        "-device".to_owned(),
        "virtio-blk-pci,drive=spec,serial=sealroom-workload,addr=0x10".to_owned(),
        "-drive".to_owned(),
        format!("if=none,id=data,format=raw,readonly=on,file={}", p.data_disk.display()),
        "-device".to_owned(),
        format!("virtio-blk-pci,drive=data,serial={DATA_SERIAL},addr=0x11"),
    ];
    if let Some(out) = output {
        extra.extend([
            "-drive".to_owned(),
            format!("if=none,id=out,format=raw,file={}", out.display()),
            "-device".to_owned(),
            format!("virtio-blk-pci,drive=out,serial={OUTPUT_SERIAL},addr=0x12"),
        ]);
    }
    Vm::boot(&p.disk, &format!("demo-{tag}"), &extra).map_err(anyhow::Error::msg)
}

/// Prints the VM's new `sealroom-workload:` and job console lines since `seen` lines.
fn echo_console(vm: &Vm, tag: &str, seen: &mut usize) {
    let text = vm.serial_text();
    let lines: Vec<&str> = text.lines().collect();
    for line in lines.iter().skip(*seen) {
        let line = line.trim_end_matches('\r');
        if line.contains("sealroom-workload:")
            || line.contains("workload|")
            || line.contains("sealroom-init: power")
        {
            println!("         {tag}| {}", line.trim());
        }
    }
    *seen = lines.len().max(*seen);
}

/// Waits for `marker` while echoing the console; fails at once when `failure` appears first (its line is the
/// error), on a kernel panic or when QEMU exits.
fn follow(
    vm: &mut Vm,
    tag: &str,
    seen: &mut usize,
    marker: &str,
    failure: Option<&str>,
    timeout: Duration,
) -> Result<()> {
    let r = follow_inner(vm, tag, seen, marker, failure, timeout);
    if r.is_err() {
        // The VM's directory goes with it: show the end of its console now.
        let text = vm.serial_text();
        let lines: Vec<&str> = text.lines().collect();
        println!("[demo]   --- last console lines of {tag} ---");
        for l in lines.iter().skip(lines.len().saturating_sub(40)) {
            println!("         {tag}| {}", l.trim_end());
        }
    }
    r
}

fn follow_inner(
    vm: &mut Vm,
    tag: &str,
    seen: &mut usize,
    marker: &str,
    failure: Option<&str>,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        echo_console(vm, tag, seen);
        match vm.wait_for(marker, Duration::from_millis(500)) {
            Ok(_) => {
                echo_console(vm, tag, seen);
                return Ok(());
            }
            Err(e) if !e.starts_with("no ") => bail!("{e}"),
            Err(_) if Instant::now() > deadline => bail!("no {marker:?} on the console within {timeout:?}"),
            Err(_) => {}
        }
        if let Some(f) = failure {
            let text = vm.serial_text();
            if let Some(line) = text.lines().find(|l| l.contains(f)) {
                echo_console(vm, tag, seen);
                bail!("{}", line.trim());
            }
        }
    }
}

/// The VM's TPM attestation key, from one GetEvidence (the provider's out-of-band enrolment of this machine).
fn enrol(vm: &Vm, path: &Path) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let url = vm.agent_url();
    let ev = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(60);
        let channel = loop {
            match tonic::transport::Channel::from_shared(url.clone())?.connect().await {
                Ok(c) => break c,
                Err(e) if Instant::now() > deadline => bail!("cannot reach the agent at {url}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        let mut client = apb::attestation_client::AttestationClient::new(channel);
        let mut nonce = vec![0u8; 32];
        sealroom_demo::random(&mut nonce)?;
        let reply = tokio::time::timeout(
            Duration::from_secs(120),
            client.get_evidence(apb::GetEvidenceRequest { nonce, tee_public_key: Vec::new() }),
        )
        .await
        .context("GetEvidence timed out")?
        .map_err(|s| anyhow::anyhow!("GetEvidence: {}", s.message()))?;
        reply.into_inner().evidence.context("no evidence in the reply")
    })?;
    let ak = ev.tpm.context("the VM's evidence has no TPM quote")?.ak_public;
    write(path, &ak)?;
    println!("[demo]   AK enrolled: sha256 {}", sha256_hex(&ak));
    Ok(())
}

/// A zero-filled (sparse) output disk of OUTPUT_DISK_BYTES at `path`, for the agent to write its result tar on.
fn blank_disk(path: &Path) -> Result<PathBuf> {
    std::fs::File::create(path)?.set_len(OUTPUT_DISK_BYTES)?;
    Ok(path.to_path_buf())
}

fn approved_run(p: &Prepared) -> Result<PathBuf> {
    println!("[demo] ===== run 1: the approved job =====");
    let out_disk = blank_disk(&p.work.join("approved-output.raw"))?;
    let ak = p.work.join("approved-vm.ak");
    let tag = "vm1";
    let mut seen = 0;
    let mut vm = step(
        "operator: boot the sealroom image (QEMU TCG + OVMF + swtpm) with spec, data and output disks",
        || {
            let mut vm = boot(p, "approved", &p.approved_ref, p.broker_port, Some(&out_disk))?;
            follow(&mut vm, tag, &mut seen, vm::SERVING_MARKER, Some(REFUSAL_MARKER), BOOT_TIMEOUT)?;
            println!("[demo]   agent serving {:.1} s after QEMU started", vm.started.elapsed().as_secs_f64());
            Ok(vm)
        },
    )?;
    let broker = step("data provider: enrol the VM's TPM key and start sealroom broker serve", || {
        enrol(&vm, &ak)?;
        start_broker(p, p.broker_port, std::slice::from_ref(&ak))
    })?;
    step("VM: measure the job, obtain the key, run it, measure the output, obtain the receipt", || {
        follow(&mut vm, tag, &mut seen, RECEIPT_WRITTEN, Some("REFUSED/FAILED"), RUN_TIMEOUT)?;
        let text = vm.serial_text();
        ensure!(
            text.contains(&format!("sealroom-workload: key {KEY_ID} released to the workload")),
            "no key release on the console"
        );
        if let Some(line) = text.lines().find(|l| l.contains("REFUSED/FAILED")) {
            bail!("{}", line.trim());
        }
        vm.wait_for_exit(Duration::from_secs(120)).map_err(anyhow::Error::msg)?;
        echo_console(&vm, tag, &mut seen);
        println!("[demo]   VM powered off {:.1} s after QEMU started", vm.started.elapsed().as_secs_f64());
        Ok(())
    })?;
    write(&p.work.join("approved-console.log"), vm.serial_text())?;
    drop(vm);
    drop(broker);
    let result = p.work.join("result");
    step("operator: unpack the output disk (a plain tar archive) into result/", || {
        std::fs::create_dir_all(&result)?;
        let st = Command::new("tar").arg("-xf").arg(&out_disk).arg("-C").arg(&result).status()?;
        ensure!(st.success(), "tar -xf {} failed", out_disk.display());
        for name in ["output", "output.sha256", "receipt.jwt", "evidence.pb"] {
            ensure!(result.join(name).exists(), "the result has no {name}");
        }
        Ok(())
    })?;
    step("anyone: sealroom verify-receipt result/ --golden … --broker-key …", || {
        let jwk = p.state.join("signing-key.jwk.json");
        let key_hex = p.golden_key_hex.as_str();
        let cmd_line = format!(
            "sealroom verify-receipt {} --golden {} --golden-key {key_hex} --broker-key {} --tpm-ak {}",
            result.display(),
            p.golden.display(),
            jwk.display(),
            ak.display()
        );
        println!("[demo]   $ {cmd_line}");
        let (ok, out) = sealroom_output(&[
            "verify-receipt".as_ref(),
            result.as_os_str(),
            "--golden".as_ref(),
            p.golden.as_os_str(),
            "--golden-key".as_ref(),
            key_hex.as_ref(),
            "--broker-key".as_ref(),
            jwk.as_os_str(),
            "--tpm-ak".as_ref(),
            ak.as_os_str(),
        ])?;
        print!("{}", indent(&out));
        ensure!(ok, "the receipt did not verify");
        Ok(())
    })?;
    step("anyone: a result whose metrics were edited afterwards is refused", || {
        let tampered = p.work.join("result-edited");
        let st = Command::new("cp").arg("-a").arg(&result).arg(&tampered).status()?;
        ensure!(st.success(), "cp -a {} failed", result.display());
        let metrics = tampered.join("output/metrics.json");
        let text = std::fs::read_to_string(&metrics)?;
        let r2 = text.split("\"r2\": ").nth(1).and_then(|t| t.split([',', '\n']).next()).unwrap_or_default();
        ensure!(!r2.is_empty(), "no r2 in {}", metrics.display());
        write(&metrics, text.replacen(&format!("\"r2\": {r2}"), "\"r2\": 0.99", 1))?;
        let jwk = p.state.join("signing-key.jwk.json");
        let (ok, out) = sealroom_output(&[
            "verify-receipt".as_ref(),
            tampered.as_os_str(),
            "--golden".as_ref(),
            p.golden.as_os_str(),
            "--golden-key".as_ref(),
            p.golden_key_hex.as_ref(),
            "--broker-key".as_ref(),
            jwk.as_os_str(),
        ])?;
        println!("[demo]   test R² {r2} → 0.99 in a copy; sealroom verify-receipt on it:");
        print!("{}", indent(&out));
        ensure!(
            !ok && out.contains("output file changed: metrics.json"),
            "the edited result was not refused: {out}"
        );
        Ok(())
    })?;
    step("researcher: the result", || {
        let metrics: serde_json::Value =
            serde_json::from_slice(&std::fs::read(result.join("output/metrics.json"))?)?;
        println!("{}", indent(&serde_json::to_string_pretty(&metrics)?));
        let model: serde_json::Value =
            serde_json::from_slice(&std::fs::read(result.join("output/model.json"))?)?;
        println!("{}", indent(&serde_json::to_string_pretty(&model)?));
        Ok(())
    })?;
    Ok(result)
}

fn modified_run(p: &Prepared) -> Result<String> {
    println!("[demo] ===== run 2: the same with a modified job (another image digest) =====");
    let out_disk = blank_disk(&p.work.join("modified-output.raw"))?;
    let ak = p.work.join("modified-vm.ak");
    let tag = "vm2";
    let mut seen = 0;
    let mut vm =
        step("operator: boot a fresh VM with the modified job's spec, the data and an output disk", || {
            let mut vm = boot(p, "modified", &p.modified_ref, p.broker_port, Some(&out_disk))?;
            follow(&mut vm, tag, &mut seen, vm::SERVING_MARKER, Some(REFUSAL_MARKER), BOOT_TIMEOUT)?;
            println!("[demo]   agent serving {:.1} s after QEMU started", vm.started.elapsed().as_secs_f64());
            Ok(vm)
        })?;
    let broker = step("data provider: enrol this VM's TPM key and start sealroom broker serve", || {
        enrol(&vm, &ak)?;
        let mut aks = vec![ak.clone()];
        let first = p.work.join("approved-vm.ak");
        if first.exists() {
            aks.push(first);
        }
        start_broker(p, p.broker_port, &aks)
    })?;
    let console_reason = step("VM: measure the job and ask for the key (expected: refused)", || {
        follow(&mut vm, tag, &mut seen, REFUSAL_MARKER, Some("workload ended"), RUN_TIMEOUT)?;
        let text = vm.serial_text();
        let line = text
            .lines()
            .find(|l| l.contains(REFUSAL_MARKER))
            .map(|l| l.trim().to_owned())
            .unwrap_or_default();
        let expected = format!(
            "broker refused key {KEY_ID}: policy.image_digests: workload image digest {} not allowed",
            p.modified_digest
        );
        ensure!(line.contains(&expected), "refused, but not for the policy reason: {line}");
        ensure!(!text.contains("released to the workload"), "a key was released to the modified job");
        ensure!(!text.contains("workload ended"), "the modified job ran");
        println!("[demo]   console: {line}");
        Ok(expected)
    })?;
    step("operator: power the VM off (ACPI power button); nothing was written to the output disk", || {
        vm.power_off().map_err(anyhow::Error::msg)?;
        let out = std::fs::read(&out_disk)?;
        ensure!(out.iter().all(|b| *b == 0), "the modified job's output disk was written");
        Ok(())
    })?;
    drop(broker);
    step("anyone: the broker's audit log (hash chain checked with sealroom audit verify)", || {
        let log = p.state.join("audit.log");
        let (ok, out) = sealroom_output(&["audit".as_ref(), "verify".as_ref(), log.as_os_str()])?;
        println!("[demo]   $ sealroom audit verify {}", log.display());
        print!("{}", indent(&out));
        ensure!(ok, "the audit log does not verify");
        let text = std::fs::read_to_string(&log)?;
        let last: serde_json::Value =
            serde_json::from_str(text.lines().last().context("the audit log is empty")?)?;
        println!("[demo]   last record: {last}");
        ensure!(
            [("decision", "refused"), ("rule", "policy.image_digests"), ("key_id", KEY_ID)]
                .iter()
                .all(|(k, v)| last.get(k).and_then(serde_json::Value::as_str) == Some(v)),
            "the last audit record is not the policy refusal: {last}"
        );
        Ok(())
    })?;
    Ok(console_reason)
}
