//! Loads the kernel modules shipped in the image, dependencies first, from `modules.dep`.
//!
//! The image carries exactly the modules it needs (chosen in `image/mkosi/mkosi.conf`), so PID 1
//! loads every module listed; drivers for absent hardware (gve under QEMU, tdx-guest outside TDX)
//! fail with ENODEV, which is logged and harmless.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `modules.dep` parsed: module path (relative to the modules directory) → its direct dependencies.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ModuleDeps {
    deps: BTreeMap<String, Vec<String>>,
}

impl ModuleDeps {
    /// Parses the text of `modules.dep` (`path: dep dep …` per line); malformed lines are skipped.
    pub fn parse(text: &str) -> Self {
        let mut deps = BTreeMap::new();
        for line in text.lines() {
            let Some((module, rest)) = line.split_once(':') else { continue };
            let module = module.trim();
            if module.is_empty() {
                continue;
            }
            deps.insert(module.to_owned(), rest.split_ascii_whitespace().map(str::to_owned).collect());
        }
        Self { deps }
    }

    /// Every module, each after all of its dependencies, in a stable order. Unknown dependencies are
    /// kept (loading them will fail and be logged); cycles are broken.
    pub fn load_order(&self) -> Vec<String> {
        let mut order = Vec::new();
        let mut done = BTreeSet::new();
        let mut visiting = BTreeSet::new();
        for module in self.deps.keys() {
            self.visit(module, &mut done, &mut visiting, &mut order);
        }
        order
    }

    fn visit(
        &self,
        module: &str,
        done: &mut BTreeSet<String>,
        visiting: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) {
        if done.contains(module) || !visiting.insert(module.to_owned()) {
            return;
        }
        for dep in self.deps.get(module).into_iter().flatten() {
            self.visit(dep, done, visiting, order);
        }
        visiting.remove(module);
        done.insert(module.to_owned());
        order.push(module.to_owned());
    }
}

/// The modules directory for the running kernel (`/usr/lib/modules/$(uname -r)`).
pub fn modules_dir() -> PathBuf {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    Path::new("/usr/lib/modules").join(release.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_load_first() {
        let deps = ModuleDeps::parse(
            "kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko\n\
             kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n\
             kernel/net/core/failover.ko:\n\
             kernel/fs/configfs/configfs.ko:\n\
             kernel/drivers/virt/coco/tsm.ko: kernel/fs/configfs/configfs.ko\n\
             garbage line\n",
        );
        let order = deps.load_order();
        assert_eq!(order.len(), 5);
        let pos = |m: &str| order.iter().position(|x| x.ends_with(m)).unwrap();
        assert!(pos("/failover.ko") < pos("/net_failover.ko"));
        assert!(pos("/net_failover.ko") < pos("/virtio_net.ko"));
        assert!(pos("/configfs.ko") < pos("/tsm.ko"));
    }

    #[test]
    fn cycles_terminate() {
        let deps = ModuleDeps::parse("a.ko: b.ko\nb.ko: a.ko\n");
        assert_eq!(deps.load_order().len(), 2);
    }
}
