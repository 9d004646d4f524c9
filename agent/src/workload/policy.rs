//! The launch policy: what the image author allows the operator to change, read from the image config's
//! labels (Confidential Space's names), and enforced before anything is measured or run.
//!
//! | label | value | default when absent |
//! |---|---|---|
//! | `tee.launch_policy.allow_env_override` | comma-separated variable names the operator may set | none |
//! | `tee.launch_policy.allow_cmd_override` | `true` / `false`: may the operator replace CMD | `false` |
//! | `tee.launch_policy.log_redirect` | `always` / `never` / `debugonly` (sealroom has no debug mode: = `never`) | `never` |
//!
//! Any other `tee.launch_policy.*` label is refused: a restriction the agent does not understand cannot be
//! honoured, so the launch fails closed. The policy as enforced, plus the operator's restart policy and the
//! fixed network setting, is measured as one `launch_policy` event in a canonical text form (one `key=value`
//! per line, keys in the order below, lists comma-separated).

use std::collections::BTreeMap;

use super::spec::WorkloadSpec;
use crate::error::{Error, Result};

/// Label prefix of the launch policy.
pub const LABEL_PREFIX: &str = "tee.launch_policy.";

const STAGE: &str = "launch policy";

fn err(reason: impl Into<String>) -> Error {
    Error::workload(STAGE, reason)
}

/// Whether the workload's stdout/stderr may go to the (operator-visible) serial console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogRedirect {
    /// Allowed.
    Always,
    /// Forbidden.
    Never,
    /// Only in debug images; sealroom has none, so forbidden.
    DebugOnly,
}

impl LogRedirect {
    fn as_str(self) -> &'static str {
        match self {
            Self::Always => "always",
            Self::Never => "never",
            Self::DebugOnly => "debugonly",
        }
    }
}

/// The image's launch policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchPolicy {
    /// Environment variables the operator may set.
    pub allow_env_override: Vec<String>,
    /// Whether the operator may replace CMD.
    pub allow_cmd_override: bool,
    /// Log redirection.
    pub log_redirect: LogRedirect,
}

impl LaunchPolicy {
    /// Reads the policy from the image labels.
    ///
    /// # Errors
    /// An unknown `tee.launch_policy.*` label or a malformed value.
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Result<Self> {
        let mut p = Self {
            allow_env_override: Vec::new(),
            allow_cmd_override: false,
            log_redirect: LogRedirect::Never,
        };
        for (k, v) in labels {
            let Some(name) = k.strip_prefix(LABEL_PREFIX) else { continue };
            match name {
                "allow_env_override" => {
                    for n in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                        super::spec::parse_env(&format!("{n}="))
                            .map_err(|_| err(format!("label {k}: {n:?} is not a variable name")))?;
                        if !p.allow_env_override.iter().any(|x| x == n) {
                            p.allow_env_override.push(n.to_owned());
                        }
                    }
                }
                "allow_cmd_override" => {
                    p.allow_cmd_override = match v.as_str() {
                        "true" => true,
                        "false" => false,
                        other => return Err(err(format!("label {k}={other:?}: expected true or false"))),
                    };
                }
                "log_redirect" => {
                    p.log_redirect = match v.as_str() {
                        "always" => LogRedirect::Always,
                        "never" => LogRedirect::Never,
                        "debugonly" => LogRedirect::DebugOnly,
                        other => {
                            return Err(err(format!(
                                "label {k}={other:?}: expected always, never or debugonly"
                            )));
                        }
                    };
                }
                _ => {
                    return Err(err(format!(
                        "label {k} is not understood by this agent; refusing rather than ignoring a restriction"
                    )));
                }
            }
        }
        Ok(p)
    }

    /// Checks the operator's settings against the policy; the first violation is the error.
    ///
    /// # Errors
    /// An env var not allowed, a CMD override not allowed, log redirection not allowed.
    pub fn check(&self, spec: &WorkloadSpec) -> Result<()> {
        if spec.args.is_some() && !self.allow_cmd_override {
            return Err(err(format!(
                "the operator replaces CMD but the image forbids it ({LABEL_PREFIX}allow_cmd_override is not true)"
            )));
        }
        for (name, _) in &spec.env {
            if !self.allow_env_override.iter().any(|a| a == name) {
                return Err(err(format!(
                    "the operator sets env {name} but the image does not allow it ({LABEL_PREFIX}allow_env_override: {})",
                    if self.allow_env_override.is_empty() {
                        "none".to_owned()
                    } else {
                        self.allow_env_override.join(",")
                    }
                )));
            }
        }
        if spec.log_redirect && self.log_redirect != LogRedirect::Always {
            return Err(err(format!(
                "the operator asks for log redirection but the image forbids it ({LABEL_PREFIX}log_redirect={})",
                self.log_redirect.as_str()
            )));
        }
        Ok(())
    }

    /// The canonical text measured as the `launch_policy` event.
    #[must_use]
    pub fn canonical_text(&self, spec: &WorkloadSpec) -> String {
        format!(
            "allow_env_override={}\nallow_cmd_override={}\nlog_redirect={}\nlog_redirect_requested={}\nrestart_policy={}\nnetwork=none\n",
            self.allow_env_override.join(","),
            self.allow_cmd_override,
            self.log_redirect.as_str(),
            spec.log_redirect,
            spec.restart.as_text(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn labels_parse_strictly() {
        let p = LaunchPolicy::from_labels(&labels(&[
            ("tee.launch_policy.allow_env_override", "A, B"),
            ("tee.launch_policy.allow_cmd_override", "true"),
            ("tee.launch_policy.log_redirect", "always"),
            ("org.opencontainers.image.title", "x"),
        ]))
        .unwrap();
        assert_eq!(p.allow_env_override, vec!["A", "B"]);
        assert!(p.allow_cmd_override);
        assert!(
            LaunchPolicy::from_labels(&labels(&[("tee.launch_policy.monitoring_memory_allow", "always")]))
                .unwrap_err()
                .to_string()
                .contains("not understood")
        );
        assert!(
            LaunchPolicy::from_labels(&labels(&[("tee.launch_policy.allow_cmd_override", "yes")])).is_err()
        );
        let default = LaunchPolicy::from_labels(&BTreeMap::new()).unwrap();
        assert_eq!(default.log_redirect, LogRedirect::Never);
        assert!(!default.allow_cmd_override);
    }
}
