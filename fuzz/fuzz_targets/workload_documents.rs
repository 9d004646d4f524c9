//! The workload's parsers of operator- and image-author-controlled bytes: the spec JSON, OCI manifests and
//! indexes, image configs, and tar layers (unpacked into a scratch directory; nothing may land outside it).
//! The first byte selects the parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealroom_agent::workload::digest::Sha256Digest;
use sealroom_agent::workload::image::{self, Descriptor};
use sealroom_agent::workload::{rootfs, spec::WorkloadSpec};

fuzz_target!(|data: &[u8]| {
    let Some((selector, rest)) = data.split_first() else { return };
    match selector % 4 {
        0 => drop(WorkloadSpec::from_json(rest)),
        1 => drop(image::parse_document(rest, None)),
        2 => drop(image::parse_config(rest, 1)),
        _ => {
            let dir = std::env::temp_dir().join(format!("sealroom-fuzz-tar-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let layer = dir.join("layer.tar");
            std::fs::write(&layer, rest).unwrap();
            let desc = Descriptor {
                media_type: "application/vnd.oci.image.layer.v1.tar".into(),
                digest: Sha256Digest::of(rest),
                size: rest.len() as u64,
            };
            let _ = rootfs::unpack(&[(desc, layer)], &dir.join("root"));
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
});
