//! The "analytics" workload the broker and per-platform release tests measure without running it: one image
//! digest, its argument, provider A's key and its material, and the runtime events the launcher would measure
//! for it and for its run. One definition, so a policy written from these constants and the events an agent measured agree
//! in every test that pairs them.

use sealroom_agent::server::Running;
use sealroom_agent::workload::digest::Sha256Digest;
use sealroom_measurements::cel::RuntimeEvent;

/// The workload image the policies pin.
pub const IMAGE: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
/// The workload's argument the policies pin.
pub const ARG: &str = "--input=/data/in.parquet";
/// The provider's key.
pub const KEY_ID: &str = "provider-a/data";
/// Its material.
pub const DATA_KEY: &[u8] = b"the provider's data key";

/// What the launcher measures for the workload pinning the broker key `broker_kid`: image reference, manifest
/// digest, [`ARG`], the broker key, then the launch separator.
#[must_use]
pub fn launch_events(broker_kid: &str) -> Vec<RuntimeEvent> {
    vec![
        RuntimeEvent::ImageReference(format!("registry.example/analytics@{IMAGE}")),
        RuntimeEvent::ManifestDigest(IMAGE.into()),
        RuntimeEvent::Arg(ARG.into()),
        RuntimeEvent::BrokerKey(broker_kid.into()),
        RuntimeEvent::LaunchSeparator,
    ]
}

/// The output digest the job "wrote" in tests that measure a run without running it.
pub const OUTPUT: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

/// Measures into `agent` what the launcher measures after a run that used [`KEY_ID`] from the broker with key
/// `broker_kid`: the key's release, then [`OUTPUT`]. Returns that output digest as a receipt request names it.
///
/// # Panics
/// When the agent refuses a measurement.
#[allow(clippy::panic)]
pub async fn measure_release_and_output(agent: &Running, broker_kid: &str) -> Sha256Digest {
    for event in [
        RuntimeEvent::KeyRelease { key_id: KEY_ID.into(), broker_key: broker_kid.into() },
        RuntimeEvent::Output { name: "output".into(), digest: OUTPUT.into() },
    ] {
        agent.handle.measure(event).await.unwrap_or_else(|e| panic!("measure: {e}"));
    }
    Sha256Digest::parse(OUTPUT, "output").unwrap_or_else(|e| panic!("{OUTPUT}: {e}"))
}
