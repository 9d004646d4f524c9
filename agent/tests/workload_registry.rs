//! The workload path against real parts: Debian's docker-registry on loopback holding images the tests build,
//! the agent's worker measuring into a real TPM (swtpm), and crun running the container on this host.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic, clippy::too_many_lines)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sealroom_agent::paths::KernelPaths;
use sealroom_agent::tee_key::TeeKey;
use sealroom_agent::worker::{AttestationHandle, WorkerConfig};
use sealroom_agent::workload::fetch::FetchOptions;
use sealroom_agent::workload::runner::RuntimeConfig;
use sealroom_agent::workload::spec::WorkloadSpec;
use sealroom_agent::workload::{self, KeyProvider, NoKeys, WorkloadConfig};
use sealroom_measurements::binding::Nonce;
use sealroom_measurements::cel::{self, CelLog, CelRecord, RuntimeEvent};
use sealroom_measurements::evidence::Evidence;
use sealroom_tests::oci_image::{Entry, ImageSettings, Layer, OciImage};
use sealroom_tests::registry::Registry;
use sealroom_tests::swtpm::{Swtpm, unique_temp_dir};
use sealroom_verifier::tpm::quote::{ExpectedExtraData, VerifiedQuote, verify_quote};
use sealroom_verifier::tpm::structures::Public;

async fn handle(tcti: Option<String>) -> AttestationHandle {
    let root = unique_temp_dir("wl-root");
    std::fs::create_dir_all(&root).unwrap();
    let cfg = WorkerConfig {
        paths: KernelPaths::new(root),
        no_tpm: tcti.is_none(),
        tcti,
        runtime_log_dir: unique_temp_dir("wl-rtlog"),
        queue_depth: 16,
        request_timeout: Duration::from_secs(20),
    };
    tokio::task::spawn_blocking(move || AttestationHandle::start(&cfg, TeeKey::generate().unwrap()))
        .await
        .unwrap()
        .unwrap()
}

fn records(h: &AttestationHandle) -> Vec<CelRecord> {
    CelLog::decode(&h.runtime_log().0).unwrap()
}

/// Fresh evidence for nonce `[n; 32]` and its TPM quote, verified against the evidence's own AK.
async fn quoted(h: &AttestationHandle, n: u8) -> (Evidence, VerifiedQuote) {
    let nonce = Nonce([n; 32]);
    let ev = h.evidence(nonce).await.unwrap();
    let tpm_ev = ev.tpm.as_ref().unwrap();
    let ak = Public::parse(&tpm_ev.ak_public).unwrap();
    let verified = verify_quote(
        &tpm_ev.attest,
        &tpm_ev.signature,
        &ak,
        &tpm_ev.pcr_banks,
        &ExpectedExtraData::Binding(nonce, ev.tee_public_key.clone()),
    )
    .unwrap();
    (ev, verified)
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// A two-layer busybox image whose policy allows GREETING, CMD override and log redirection.
fn permissive_image(cmd: &[&str], user: &str) -> OciImage {
    let extra = Layer::build(
        &[Entry::Dir("etc/"), Entry::File("etc/motd".into(), b"sealroom test image\n".to_vec(), 0o644)],
        false,
    );
    OciImage::new(
        &ImageSettings {
            entrypoint: vec!["/bin/busybox".into()],
            cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
            env: vec!["PATH=/bin".into(), "GREETING=hello".into()],
            user: user.into(),
            labels: labels(&[
                ("tee.launch_policy.allow_env_override", "GREETING"),
                ("tee.launch_policy.allow_cmd_override", "true"),
                ("tee.launch_policy.log_redirect", "always"),
            ]),
        },
        vec![Layer::busybox(), extra],
    )
}

fn config(tag: &str, runtime: RuntimeConfig) -> WorkloadConfig {
    let dir = unique_temp_dir(tag);
    WorkloadConfig {
        work_dir: dir.join("work"),
        keys_dir: dir.join("keys"),
        output_dir: dir.join("output"),
        runtime,
        fetch: FetchOptions {
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(30),
        },
    }
}

fn spec(json: &serde_json::Value) -> WorkloadSpec {
    WorkloadSpec::from_json(json.to_string().as_bytes()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_pull_is_verified_and_measured_in_order_and_replays_to_pcr15() {
    let registry = Registry::start().unwrap();
    let tpm = Swtpm::start().unwrap();
    let h = handle(Some(tpm.tcti())).await;
    let image = permissive_image(&["sh", "-c", "echo hi"], "");
    let reference = registry.push("test/app", "v1", &image).unwrap();
    let s = spec(&serde_json::json!({
        "image": reference, "args": ["sh", "-c", "true"], "env": ["GREETING=hi"],
        "insecure_registries": [registry.host()], "restart": "on-failure:2",
    }));
    let cfg = config("wl-order", RuntimeConfig::crun(Path::new("/nonexistent")));
    let (fetched, plan) = workload::prepare(&s, &cfg, &h).await.unwrap();
    assert_eq!(fetched.manifest_digest.to_string(), image.manifest_digest());
    assert_eq!(fetched.config_digest.to_string(), image.config_digest());

    let recs = records(&h);
    let events: Vec<RuntimeEvent> = recs.iter().map(|r| r.event.clone()).collect();
    let mut expected = vec![
        RuntimeEvent::ImageReference(reference.clone()),
        RuntimeEvent::ManifestDigest(image.manifest_digest()),
        RuntimeEvent::ConfigDigest(image.config_digest()),
        RuntimeEvent::Arg("/bin/busybox".into()),
        RuntimeEvent::Arg("sh".into()),
        RuntimeEvent::Arg("-c".into()),
        RuntimeEvent::Arg("true".into()),
        RuntimeEvent::Env("PATH=/bin".into()),
        RuntimeEvent::Env("GREETING=hi".into()),
    ];
    expected.extend(plan.mounts.iter().cloned().map(RuntimeEvent::Mount));
    expected.push(RuntimeEvent::LaunchPolicy(
        "allow_env_override=GREETING\nallow_cmd_override=true\nlog_redirect=always\nlog_redirect_requested=false\n\
         restart_policy=on-failure:2\nnetwork=none\n"
            .into(),
    ));
    expected.push(RuntimeEvent::LaunchSeparator);
    assert_eq!(events, expected);
    let dests: Vec<&str> = plan.mounts.iter().map(|m| m.destination.as_str()).collect();
    assert!(dests.contains(&"/run/sealroom/keys") && dests.contains(&"/output"), "{dests:?}");

    // The log replays to PCR 15 as a real TPM quotes it, in every bank.
    let (ev, verified) = quoted(&h, 7).await;
    let from_evidence = CelLog::decode(&ev.runtime_event_log).unwrap();
    assert_eq!(from_evidence, recs);
    assert!(!verified.pcrs.is_empty());
    for bank in &verified.pcrs {
        cel::check_pcr(&from_evidence, bank.alg, &bank.values[&15]).unwrap();
    }
    // The blob store holds exactly the verified blobs, nothing partial.
    let names: Vec<String> = std::fs::read_dir(cfg.work_dir.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names.iter().all(|n| !n.ends_with(".partial")));
    // Release the TPM before swtpm stops.
    h.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_layer_is_refused_before_unpacking_and_nothing_is_measured() {
    let registry = Registry::start().unwrap();
    let h = handle(None).await;
    let image = permissive_image(&["sh", "-c", "echo hi"], "");
    let reference = registry.push("test/corrupt", "v1", &image).unwrap();
    // Flip one byte of the busybox layer inside the registry's storage (same size, wrong digest).
    let layer_hex = sealroom_tests::oci_image::sha256_digest(&image.layers[0].bytes)
        .trim_start_matches("sha256:")
        .to_owned();
    let path = registry.blob_data_path(&layer_hex);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();

    let s = spec(&serde_json::json!({"image": reference, "insecure_registries": [registry.host()]}));
    let cfg = config("wl-corrupt", RuntimeConfig::crun(Path::new("/nonexistent")));
    let e = workload::run(&s, &cfg, &h, &NoKeys).await.unwrap_err().to_string();
    assert!(e.starts_with("workload fetch: layer 0 digest mismatch: expected sha256:"), "{e}");
    assert!(e.contains("refused before unpacking"), "{e}");
    assert!(records(&h).is_empty(), "nothing may be measured for a refused image");
    assert!(!cfg.work_dir.join("bundle").exists(), "nothing may be unpacked");
    let left: Vec<PathBuf> =
        std::fs::read_dir(cfg.work_dir.join("blobs")).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(left.iter().all(|p| !p.to_string_lossy().contains(&layer_hex)), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_policy_violations_are_refused_before_anything_is_measured() {
    let registry = Registry::start().unwrap();
    let h = handle(None).await;
    // No labels: the defaults forbid env overrides, CMD overrides and log redirection.
    let strict = OciImage::new(
        &ImageSettings {
            entrypoint: vec!["/bin/busybox".into()],
            cmd: vec!["true".into()],
            ..ImageSettings::default()
        },
        vec![Layer::busybox()],
    );
    let reference = registry.push("test/strict", "v1", &strict).unwrap();
    let cases = [
        (
            serde_json::json!({"env": ["SECRET_MODE=debug"]}),
            "workload launch policy: the operator sets env SECRET_MODE but the image does not allow it \
             (tee.launch_policy.allow_env_override: none)",
        ),
        (
            serde_json::json!({"args": ["sh"]}),
            "workload launch policy: the operator replaces CMD but the image forbids it \
             (tee.launch_policy.allow_cmd_override is not true)",
        ),
        (
            serde_json::json!({"log_redirect": true}),
            "workload launch policy: the operator asks for log redirection but the image forbids it \
             (tee.launch_policy.log_redirect=never)",
        ),
    ];
    for (extra, reason) in cases {
        let mut doc = serde_json::json!({"image": reference, "insecure_registries": [registry.host()]});
        for (k, v) in extra.as_object().unwrap() {
            doc[k] = v.clone();
        }
        let cfg = config("wl-policy", RuntimeConfig::crun(Path::new("/nonexistent")));
        let e = workload::run(&spec(&doc), &cfg, &h, &NoKeys).await.unwrap_err().to_string();
        assert_eq!(e, reason);
        assert!(records(&h).is_empty());
    }
    // An unknown launch-policy label fails closed.
    let odd = OciImage::new(
        &ImageSettings {
            cmd: vec!["/bin/busybox".into()],
            labels: labels(&[("tee.launch_policy.hardened_monitoring", "memory_only")]),
            ..ImageSettings::default()
        },
        vec![Layer::busybox()],
    );
    let reference = registry.push("test/odd", "v1", &odd).unwrap();
    let doc = serde_json::json!({"image": reference, "insecure_registries": [registry.host()]});
    let cfg = config("wl-policy2", RuntimeConfig::crun(Path::new("/nonexistent")));
    let e = workload::run(&spec(&doc), &cfg, &h, &NoKeys).await.unwrap_err().to_string();
    assert!(e.contains("tee.launch_policy.hardened_monitoring is not understood"), "{e}");
    assert!(records(&h).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_registry_and_a_missing_image_are_clear_errors() {
    let h = handle(None).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let digest = format!("sha256:{}", "ab".repeat(32));
    let doc = serde_json::json!({"image": format!("127.0.0.1:{closed}/x/y@{digest}"),
                                  "insecure_registries": [format!("127.0.0.1:{closed}")]});
    let cfg = config("wl-unreach", RuntimeConfig::crun(Path::new("/nonexistent")));
    let e = workload::run(&spec(&doc), &cfg, &h, &NoKeys).await.unwrap_err().to_string();
    assert!(e.starts_with("workload fetch: "), "{e}");
    assert!(!e.contains('\n'), "one line: {e}");

    let registry = Registry::start().unwrap();
    let doc = serde_json::json!({"image": format!("{}/x/y@{digest}", registry.host()),
                                  "insecure_registries": [registry.host()]});
    let e = workload::run(&spec(&doc), &cfg, &h, &NoKeys).await.unwrap_err().to_string();
    assert!(e.starts_with("workload fetch: manifest"), "{e}");
    assert!(records(&h).is_empty());
    // The attestation worker still answers (no TPM here: it says so).
    assert!(h.evidence(Nonce([1; 32])).await.unwrap_err().to_string().contains("no attester"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oci_layout_on_disk_gives_the_same_measurements_as_the_registry() {
    let registry = Registry::start().unwrap();
    let image = permissive_image(&["sh", "-c", "echo hi"], "");
    let reference = registry.push("test/layout", "v1", &image).unwrap();
    let layout_dir = unique_temp_dir("wl-layout");
    let layout_ref = image.write_layout(&layout_dir).unwrap();

    let from_registry = handle(None).await;
    let s = spec(&serde_json::json!({"image": reference, "insecure_registries": [registry.host()]}));
    let cfg = config("wl-layout-a", RuntimeConfig::crun(Path::new("/nonexistent")));
    workload::prepare(&s, &cfg, &from_registry).await.unwrap();

    let from_layout = handle(None).await;
    let s = spec(&serde_json::json!({"image": layout_ref}));
    let cfg2 = WorkloadConfig { work_dir: unique_temp_dir("wl-layout-b"), ..cfg.clone() };
    workload::prepare(&s, &cfg2, &from_layout).await.unwrap();
    let a = records(&from_registry);
    let b = records(&from_layout);
    assert_eq!(a.len(), b.len());
    // Everything but the reference string itself is the same.
    assert_eq!(a[1..], b[1..]);
    assert_eq!(b[0].event, RuntimeEvent::ImageReference(layout_ref));

    // A tampered blob on the disk is refused like a tampered registry blob.
    let hex = sealroom_tests::oci_image::sha256_digest(&image.layers[1].bytes)
        .trim_start_matches("sha256:")
        .to_owned();
    let p = layout_dir.join("blobs/sha256").join(&hex);
    let mut bytes = std::fs::read(&p).unwrap();
    bytes.push(0);
    std::fs::write(&p, bytes).unwrap();
    let h = handle(None).await;
    let cfg3 = WorkloadConfig { work_dir: unique_temp_dir("wl-layout-c"), ..cfg };
    let e = workload::prepare(&s, &cfg3, &h).await.unwrap_err().to_string();
    assert!(e.contains("layer 1") && e.contains("more than the declared"), "{e}");
    assert!(records(&h).is_empty());
}

/// Gives the workload one fixed key (the broker's role; the broker itself is tested in verifier/).
struct FixedKey;

impl KeyProvider for FixedKey {
    async fn release(
        &self,
        broker: &workload::spec::BrokerEndpoint,
        key_ids: &[String],
    ) -> sealroom_agent::Result<Vec<(String, Vec<u8>)>> {
        assert_eq!(broker.url, "http://127.0.0.1:9");
        Ok(key_ids.iter().map(|k| (k.clone(), b"0123456789abcdef".to_vec())).collect())
    }
}

/// crun as this host allows it: directly when /sys/fs/cgroup is a pure cgroup2 (or legacy) hierarchy; in a
/// private mount namespace with a cgroup2 mount when the host has the hybrid layout with controllers enabled
/// on the cgroup2 side (this sandbox), which crun 1.8 refuses even with `--cgroup-manager=disabled`.
fn host_crun(state_dir: &Path) -> RuntimeConfig {
    let mut rt = RuntimeConfig::crun(state_dir);
    let hybrid_controllers = std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers")
        .is_ok_and(|c| !c.trim().is_empty());
    if hybrid_controllers {
        let wrapper = state_dir.with_extension("crun-wrapper.sh");
        std::fs::create_dir_all(wrapper.parent().unwrap()).unwrap();
        std::fs::write(
            &wrapper,
            "#!/bin/sh\nexec unshare --mount --propagation private sh -c \
             'mount -t cgroup2 none /sys/fs/cgroup && exec crun \"$@\"' crun \"$@\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        rt.program = wrapper;
    }
    rt
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_container_runs_hardened_in_crun_with_keys_output_and_restarts() {
    hardened_run(false).await;
}

/// As in the VM, whose root is the initramfs (pivot_root refused): crun `--no-pivot`, same guarantees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_container_without_pivot_root_as_in_the_initramfs() {
    hardened_run(true).await;
}

async fn hardened_run(no_pivot: bool) {
    if !nix_is_root() {
        eprintln!("SKIPPED: crun needs root to create namespaces; run the tests as root (CI does)");
        return;
    }
    let registry = Registry::start().unwrap();
    let tpm = Swtpm::start().unwrap();
    let h = handle(Some(tpm.tcti())).await;
    let script = "cat /proc/self/status > /output/status; id -u > /output/uid; cat /run/sealroom/keys/dataset-key \
                  > /output/key-copy; ls -l /run/sealroom/keys > /output/keys-ls; echo $GREETING from the workload; \
                  (touch /rootfs-write) 2> /output/rofs; ip link 2>/dev/null | wc -l > /output/links; mkdir -p \
                  /output/sub; echo result > /output/sub/r.txt; exit 3";
    let image = permissive_image(&["sh", "-c", script], "worker");
    let reference = registry.push("test/run", "v1", &image).unwrap();
    let s = spec(&serde_json::json!({
        "image": reference, "insecure_registries": [registry.host()], "env": ["GREETING=hi"],
        "log_redirect": true, "restart": "on-failure:1", "broker": "http://127.0.0.1:9",
        "broker_key": "3Mfj4cM9KvTWQ7pmqfyIXlM3YzZ2r3JN0a4cDnmWc8I", "key_ids": ["dataset-key"],
    }));
    let base = unique_temp_dir("wl-run");
    let mut runtime = host_crun(&base.join("crun-state"));
    if no_pivot {
        runtime.run_args.push("--no-pivot".into());
    }
    let cfg = config("wl-run", runtime);
    let outcome = workload::run(&s, &cfg, &h, &FixedKey).await.unwrap();
    assert_eq!(outcome.exit_code, 3);
    assert_eq!(outcome.runs, 2, "on-failure:1 runs a failing workload twice");

    let read = |name: &str| std::fs::read_to_string(cfg.output_dir.join(name)).unwrap();
    let status = read("status");
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    assert!(status.contains("Seccomp:\t2"), "{status}");
    assert!(status.contains("CapEff:\t0000000000000000"), "{status}");
    assert!(status.contains("CapBnd:\t0000000000000000"), "{status}");
    assert_eq!(read("uid").trim(), "1000");
    assert_eq!(read("key-copy"), "0123456789abcdef");
    assert!(read("keys-ls").contains("-r--------"), "{}", read("keys-ls"));
    assert!(read("rofs").contains("Read-only file system"), "{}", read("rofs"));
    // An empty network namespace: the loopback interface only (two lines of `ip link`).
    assert_eq!(read("links").trim(), "2", "network interfaces seen by the workload");

    // Measured: the launch events, then the key release, then the output, in that order.
    let recs = records(&h);
    let sep = recs.iter().position(|r| r.event == RuntimeEvent::LaunchSeparator).unwrap();
    // The broker key the spec pins is measured before the separator.
    assert_eq!(
        recs[sep - 2].event,
        RuntimeEvent::BrokerKey("3Mfj4cM9KvTWQ7pmqfyIXlM3YzZ2r3JN0a4cDnmWc8I".into())
    );
    assert_eq!(
        recs[sep + 1].event,
        RuntimeEvent::KeyRelease {
            key_id: "dataset-key".into(),
            broker_key: "3Mfj4cM9KvTWQ7pmqfyIXlM3YzZ2r3JN0a4cDnmWc8I".into()
        }
    );
    assert_eq!(
        recs[sep + 2].event,
        RuntimeEvent::Output { name: "output".into(), digest: outcome.output_digest.to_string() }
    );
    assert_eq!(recs.len(), sep + 3);

    // The output digest is what coreutils computes from the files.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("find . -type f -printf '%P\\0' | LC_ALL=C sort -z | xargs -0r sha256sum | sha256sum")
        .current_dir(&cfg.output_dir)
        .output()
        .unwrap();
    let coreutils = String::from_utf8(out.stdout).unwrap();
    assert_eq!(format!("sha256:{}", &coreutils[..64]), outcome.output_digest.to_string());

    // And the PCR 15 value the TPM quotes replays from the log.
    let (_, verified) = quoted(&h, 9).await;
    for bank in &verified.pcrs {
        cel::check_pcr(&recs, bank.alg, &bank.values[&15]).unwrap();
    }
    h.shutdown(Duration::from_secs(5)).await;
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .is_some_and(|l| l.split_whitespace().nth(2) == Some("0"))
}
