//! The OCI runtime bundle: the launch plan (exact argv, env, user, mounts) and the runtime spec
//! (`config.json`) handed to crun.
//!
//! Fixed hardening, the same for every workload: read-only root, no new privileges, every capability set
//! empty, the default seccomp profile below, new PID/IPC/UTS/mount/network/cgroup namespaces (the network
//! namespace has only a loopback interface: the workload cannot send its data anywhere), `/proc` and `/sys`
//! paths masked or read-only as in runc's defaults. Writable places: `/tmp` (tmpfs) and `/output` (bind mount
//! of the agent's output directory); keys appear read-only in `/run/sealroom/keys`. Every mount is measured.
//! Resources: the container lives in the cgroup [`CGROUP_PATH`] with `memory.max` = the spec's `memory_limit`
//! (no swap) and at most [`PIDS_LIMIT`] tasks, so a runaway workload is killed by the kernel's OOM killer
//! inside its own cgroup instead of starving the agent.

use std::path::{Path, PathBuf};

use sealroom_measurements::cel::Mount;
use serde_json::{Value, json};

use super::fetch::FetchedImage;
use super::spec::WorkloadSpec;
use crate::error::{Error, Result};

const STAGE: &str = "bundle";
/// Where keys appear inside the container (and where the agent writes them in the VM).
pub const KEYS_DESTINATION: &str = "/run/sealroom/keys";
/// Where the writable output directory appears inside the container.
pub const OUTPUT_DESTINATION: &str = "/output";
/// The container's cgroup, relative to the cgroup2 root (`/sys/fs/cgroup` in the VM).
pub const CGROUP_PATH: &str = "/sealroom/workload";
/// Memory kept for the agent and the kernel when the spec gives no `memory_limit`.
pub const AGENT_MEMORY_RESERVE: u64 = 256 << 20;
/// Most tasks (processes and threads) in the container: a fork bomb stops there.
pub const PIDS_LIMIT: u64 = 4096;
/// PATH given when the image sets none.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn err(reason: impl Into<String>) -> Error {
    Error::workload(STAGE, reason)
}

/// Exactly what will run: measured event by event before the runtime starts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchPlan {
    /// argv (ENTRYPOINT followed by CMD, or by the operator's args).
    pub args: Vec<String>,
    /// Environment, `NAME=value`: the image's, then the operator's overrides in place or appended.
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Mounts in runtime-spec order.
    pub mounts: Vec<Mount>,
    /// The container's memory limit, bytes (cgroup v2 `memory.max`).
    pub memory_limit: u64,
}

/// The container's memory limit: the spec's `memory_limit` if given, else the VM's memory (`mem_total`, bytes)
/// less [`AGENT_MEMORY_RESERVE`], and never below [`super::spec::MIN_MEMORY_LIMIT`].
#[must_use]
pub fn memory_limit(requested: Option<u64>, mem_total: u64) -> u64 {
    requested
        .unwrap_or_else(|| mem_total.saturating_sub(AGENT_MEMORY_RESERVE))
        .max(super::spec::MIN_MEMORY_LIMIT)
}

/// `MemTotal` of `/proc/meminfo`, in bytes (0 when unreadable).
#[must_use]
pub fn mem_total(meminfo: &str) -> u64 {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib.saturating_mul(1024))
}

fn mount(destination: &str, source: &str, fs_type: &str, options: &str) -> Mount {
    Mount {
        destination: destination.to_owned(),
        source: source.to_owned(),
        fs_type: fs_type.to_owned(),
        options: options.to_owned(),
    }
}

/// The mounts every workload gets.
#[must_use]
pub fn standard_mounts(keys_dir: &Path, output_dir: &Path) -> Vec<Mount> {
    vec![
        mount("/proc", "proc", "proc", "nosuid,noexec,nodev"),
        mount("/dev", "tmpfs", "tmpfs", "nosuid,strictatime,mode=755,size=65536k"),
        mount("/dev/pts", "devpts", "devpts", "nosuid,noexec,newinstance,ptmxmode=0666,mode=0620"),
        mount("/dev/shm", "shm", "tmpfs", "nosuid,noexec,nodev,mode=1777,size=65536k"),
        mount("/dev/mqueue", "mqueue", "mqueue", "nosuid,noexec,nodev"),
        mount("/sys", "sysfs", "sysfs", "nosuid,noexec,nodev,ro"),
        mount("/tmp", "tmpfs", "tmpfs", "nosuid,nodev,mode=1777"),
        mount(KEYS_DESTINATION, &keys_dir.display().to_string(), "bind", "rbind,ro,nosuid,nodev,noexec"),
        mount(OUTPUT_DESTINATION, &output_dir.display().to_string(), "bind", "rbind,rw,nosuid,nodev,noexec"),
    ]
}

/// Resolves `User` (`uid`, `uid:gid`, `name`, `name:group`) against the unpacked root's /etc/passwd and
/// /etc/group.
///
/// # Errors
/// A name not found, or a malformed entry.
pub fn resolve_user(user: &str, rootfs: &Path) -> Result<(u32, u32)> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    let lookup = |file: &str, name: &str, field: usize| -> Option<(u32, Option<u32>)> {
        file.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&name)).then(|| {
                let id = f.get(field).and_then(|v| v.parse().ok())?;
                Some((id, f.get(3).and_then(|v| v.parse().ok())))
            })?
        })
    };
    let (uid, primary_gid) = match u.parse::<u32>() {
        Ok(id) => (
            id,
            passwd.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.get(2).and_then(|v| v.parse::<u32>().ok()) == Some(id))
                    .then(|| f.get(3).and_then(|v| v.parse().ok()))?
            }),
        ),
        Err(_) => lookup(&passwd, u, 2)
            .ok_or_else(|| err(format!("user {u:?} is not in the image's /etc/passwd")))?,
    };
    let gid = match g {
        None => primary_gid.unwrap_or(0),
        Some(g) => match g.parse::<u32>() {
            Ok(id) => id,
            Err(_) => {
                let group = std::fs::read_to_string(rootfs.join("etc/group")).unwrap_or_default();
                lookup(&group, g, 2)
                    .ok_or_else(|| err(format!("group {g:?} is not in the image's /etc/group")))?
                    .0
            }
        },
    };
    Ok((uid, gid))
}

/// Builds the launch plan from the spec and the image config, before anything is unpacked (the user is
/// resolved afterwards with [`resolve_user`]: it follows from the measured config and layers).
///
/// # Errors
/// No command to run, a relative working directory.
pub fn plan(
    spec: &WorkloadSpec,
    image: &FetchedImage,
    keys_dir: &Path,
    output_dir: &Path,
) -> Result<LaunchPlan> {
    let c = &image.config;
    let mut args = c.entrypoint.clone();
    args.extend(spec.args.clone().unwrap_or_else(|| c.cmd.clone()));
    if args.is_empty() {
        return Err(err("the image has no ENTRYPOINT or CMD and the operator gave no args"));
    }
    let mut env = c.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_owned());
    }
    for (name, value) in &spec.env {
        let entry = format!("{name}={value}");
        let prefix = format!("{name}=");
        match env.iter_mut().find(|e| e.starts_with(&prefix)) {
            Some(slot) => *slot = entry,
            None => env.push(entry),
        }
    }
    let cwd = if c.working_dir.is_empty() { "/".to_owned() } else { c.working_dir.clone() };
    if !cwd.starts_with('/') {
        return Err(err(format!("WorkingDir {cwd:?} is not absolute")));
    }
    let total = mem_total(&std::fs::read_to_string("/proc/meminfo").unwrap_or_default());
    Ok(LaunchPlan {
        args,
        env,
        cwd,
        uid: 0,
        gid: 0,
        mounts: standard_mounts(keys_dir, output_dir),
        memory_limit: memory_limit(spec.memory_limit, total),
    })
}

/// The OCI runtime spec for `plan` with its root at `rootfs`.
#[must_use]
pub fn runtime_spec(plan: &LaunchPlan, rootfs: &Path) -> Value {
    let mounts: Vec<Value> = plan
        .mounts
        .iter()
        .map(|m| {
            json!({
                "destination": m.destination,
                "type": m.fs_type,
                "source": m.source,
                "options": m.options.split(',').filter(|o| !o.is_empty()).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": plan.uid, "gid": plan.gid},
            "args": plan.args,
            "env": plan.env,
            "cwd": plan.cwd,
            "capabilities": {"bounding": [], "effective": [], "inheritable": [], "permitted": [], "ambient": []},
            "noNewPrivileges": true,
        },
        "root": {"path": rootfs.display().to_string(), "readonly": true},
        "hostname": "sealroom-workload",
        "mounts": mounts,
        "linux": {
            "namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"},
                {"type": "cgroup"}
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/kernel/security",
                "/sys/kernel/config", "/sys/devices/virtual/powercap", "/sys/devices/virtual/misc"
            ],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
            "seccomp": super::seccomp::default_profile(),
            "cgroupsPath": CGROUP_PATH,
            // swap = limit: memory + swap may not exceed the limit, i.e. no swap (cgroup v2 memory.swap.max 0).
            "resources": {
                "memory": {"limit": plan.memory_limit, "swap": plan.memory_limit},
                "pids": {"limit": PIDS_LIMIT},
            },
        }
    })
}

/// Writes `config.json` into `bundle` (the directory holding the root).
///
/// # Errors
/// When the file cannot be written.
pub fn write_bundle(bundle: &Path, spec: &Value) -> Result<PathBuf> {
    let path = bundle.join("config.json");
    let bytes = serde_json::to_vec_pretty(spec).map_err(|e| err(format!("config.json: {e}")))?;
    std::fs::write(&path, bytes).map_err(|e| err(format!("{}: {e}", path.display())))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PINNED: &str =
        "r.example/app@sha256:0000000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn memory_limit_from_the_spec_or_the_vm_less_the_agent_reserve() {
        assert_eq!(mem_total("MemTotal:        1013456 kB\nMemFree: 1 kB\n"), 1_013_456 * 1024);
        assert_eq!(mem_total("garbage"), 0);
        assert_eq!(memory_limit(Some(64 << 20), 1 << 30), 64 << 20);
        assert_eq!(memory_limit(None, 1 << 30), (1 << 30) - AGENT_MEMORY_RESERVE);
        // A tiny VM still gets a limit the runtime can start under.
        assert_eq!(memory_limit(None, 100 << 20), super::super::spec::MIN_MEMORY_LIMIT);

        let spec =
            |extra: &str| WorkloadSpec::from_json(format!("{{\"image\":\"{PINNED}\"{extra}}}").as_bytes());
        assert_eq!(spec(",\"memory_limit\":67108864").unwrap().memory_limit, Some(64 << 20));
        assert_eq!(spec("").unwrap().memory_limit, None);
        let small = spec(",\"memory_limit\":4096").unwrap_err().to_string();
        assert!(small.contains("memory_limit: 4096 bytes, expected"), "{small}");
        assert!(spec(",\"memory_limit\":-1").is_err());
        let cmdline = format!("sealroom.workload.image={PINNED} sealroom.workload.memory_limit=33554432");
        assert_eq!(WorkloadSpec::from_cmdline_keys(&cmdline).unwrap().unwrap().memory_limit, Some(32 << 20));
        let twice = format!("{cmdline} sealroom.workload.memory_limit=33554432");
        assert!(WorkloadSpec::from_cmdline_keys(&twice).is_err());
    }

    #[test]
    fn the_runtime_spec_caps_memory_without_swap_and_tasks_in_the_workload_cgroup() {
        let tmp = Path::new("/nonexistent");
        let plan = LaunchPlan {
            args: vec!["/bin/true".into()],
            env: vec![DEFAULT_PATH.into()],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            mounts: standard_mounts(tmp, tmp),
            memory_limit: 96 << 20,
        };
        let spec = runtime_spec(&plan, tmp);
        let linux = &spec["linux"];
        assert_eq!(linux["cgroupsPath"], CGROUP_PATH);
        assert_eq!(linux["resources"]["memory"]["limit"], 96 << 20);
        assert_eq!(linux["resources"]["memory"]["swap"], 96 << 20);
        assert_eq!(linux["resources"]["pids"]["limit"], PIDS_LIMIT);
        assert!(linux["namespaces"].as_array().unwrap().contains(&serde_json::json!({"type": "cgroup"})));
    }
}
