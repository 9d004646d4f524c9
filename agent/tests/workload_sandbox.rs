//! A hostile workload against its sandbox, under real crun with exactly the runtime spec
//! `bundle::runtime_spec` produces (issue 14, finding 2): a static probe (agent/tests/data/syscall_probe.c,
//! compiled here with gcc) tries to open an AF_VSOCK socket — which would reach the host despite the empty
//! network namespace — through the native call, through i386's multiplexed `socketcall` (`int 0x80`) and
//! through the x32 ABI. The probe appends what each call returned to /output/result.
//!
//! Needs root (crun creates namespaces); skipped loudly otherwise. gcc and libc6-dev come from ci/setup.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use sealroom_agent::workload::bundle::{self, DEFAULT_PATH, LaunchPlan};
use sealroom_agent::workload::runner;
use sealroom_agent::workload::spec::RestartPolicy;
use sealroom_tests::agent::{host_crun, is_root};
use sealroom_tests::swtpm::unique_temp_dir;

/// crun's exit code for a container killed by SIGSYS (128 + 31): seccomp's bad-architecture action.
const KILLED_BY_SIGSYS: i32 = 128 + 31;
/// EPERM as a raw system call return.
const MINUS_EPERM: i64 = -1;

/// Compiles the probe once per test into `dir`.
fn probe_binary(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/syscall_probe.c");
    let out = dir.join("syscall_probe");
    let status = Command::new("gcc")
        .args(["-static", "-no-pie", "-O1", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("gcc (ci/setup installs gcc and libc6-dev)");
    assert!(status.success(), "gcc failed to build {}", src.display());
    out
}

/// How one container run ended: crun's exit code and the probe's report lines.
#[derive(Debug)]
struct ProbeRun {
    exit_code: i32,
    report: String,
}

impl ProbeRun {
    /// The raw return value the probe reported for `mode`, if it lived to report it.
    fn returned(&self, mode: &str) -> Option<i64> {
        self.report.lines().find_map(|l| l.strip_prefix(&format!("{mode} ")).and_then(|v| v.parse().ok()))
    }
}

/// Runs the probe with `mode` in a container whose runtime spec is `bundle::runtime_spec`'s, after `edit`.
async fn run_probe(probe: &Path, mode: &str, edit: impl FnOnce(&mut serde_json::Value)) -> ProbeRun {
    let base = unique_temp_dir(&format!("sandbox-{mode}"));
    let (rootfs, keys, output) = (base.join("bundle/rootfs"), base.join("keys"), base.join("output"));
    for d in ["proc", "dev", "sys", "tmp", "output", "run/sealroom/keys"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::create_dir_all(&output).unwrap();
    std::fs::copy(probe, rootfs.join("probe")).unwrap();
    let plan = LaunchPlan {
        args: vec!["/probe".into(), mode.into()],
        env: vec![DEFAULT_PATH.into()],
        cwd: "/".into(),
        uid: 0,
        gid: 0,
        mounts: bundle::standard_mounts(&keys, &output),
        memory_limit: 64 << 20,
    };
    let mut spec = bundle::runtime_spec(&plan, &rootfs);
    edit(&mut spec);
    bundle::write_bundle(&base.join("bundle"), &spec).unwrap();
    let runtime = host_crun(&base.join("crun-state")).unwrap();
    let id = format!("sandbox-{mode}-{}", std::process::id());
    let result = runner::run(&runtime, &base.join("bundle"), &id, RestartPolicy::Never, false).await.unwrap();
    let report = std::fs::read_to_string(output.join("result")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&base);
    assert!(
        report.starts_with("start 0\n"),
        "the probe did not start (exit {}): {report:?}",
        result.exit_code
    );
    ProbeRun { exit_code: result.exit_code, report }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_vsock_through_i386_socketcall_and_x32_is_killed_by_the_seccomp_filter() {
    if !is_root() {
        eprintln!("SKIPPED: crun needs root to create namespaces; run the tests as root (CI does)");
        return;
    }
    let dir = unique_temp_dir("sandbox-probe");
    std::fs::create_dir_all(&dir).unwrap();
    let probe = probe_binary(&dir);

    // The probe itself works under the profile: an ordinary socket is allowed, AF_VSOCK natively is EPERM.
    let inet = run_probe(&probe, "inet", |_| {}).await;
    assert_eq!(inet.exit_code, 0, "{inet:?}");
    assert!(inet.returned("inet").is_some_and(|fd| fd >= 0), "{inet:?}");
    let native = run_probe(&probe, "native", |_| {}).await;
    assert_eq!(native.returned("native"), Some(MINUS_EPERM), "{native:?}");

    // The finding, with the profile as it was (i386 and x32 ABIs in its architecture list): socketcall
    // reaches the kernel, which opens the vsock socket (or says it has no vsock transport) — never EPERM.
    let old = run_probe(&probe, "i386", |spec| {
        spec["linux"]["seccomp"]["architectures"] =
            serde_json::json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]);
    })
    .await;
    let reached = old.returned("i386").expect("the old profile lets socketcall return");
    assert_ne!(reached, MINUS_EPERM, "{old:?}");
    eprintln!("[attack] under the old profile, i386 socketcall(AF_VSOCK) returned {reached}");

    // The profile now: the i386 call never reaches the kernel; the thread is killed with SIGSYS.
    let i386 = run_probe(&probe, "i386", |_| {}).await;
    assert_eq!(i386.exit_code, KILLED_BY_SIGSYS, "{i386:?}");
    assert_eq!(i386.returned("i386"), None, "{i386:?}");

    // x32 (native architecture, bit 30 set in the call number): killed, or refused with EPERM by the filter —
    // never the kernel's own answer.
    let x32 = run_probe(&probe, "x32", |_| {}).await;
    assert!(
        x32.exit_code == KILLED_BY_SIGSYS || x32.returned("x32") == Some(MINUS_EPERM),
        "the x32 call was not refused by the filter: {x32:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_profile_names_the_native_architecture_only() {
    let profile = sealroom_agent::workload::seccomp::default_profile();
    let archs = profile["architectures"].as_array().unwrap();
    let native = match std::env::consts::ARCH {
        "x86_64" => "SCMP_ARCH_X86_64",
        "aarch64" => "SCMP_ARCH_AARCH64",
        other => panic!("no seccomp architecture for {other}"),
    };
    assert_eq!(archs, &[serde_json::json!(native)]);
}
