//! Replays the `workload_documents` fuzz corpus (plus truncations and byte flips) through the workload's
//! parsers: every input returns Ok or Err, none panics, and no tar layer writes outside its root.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::path::Path;

use sealroom_agent::workload::digest::Sha256Digest;
use sealroom_agent::workload::image::{self, Descriptor};
use sealroom_agent::workload::rootfs;
use sealroom_agent::workload::spec::WorkloadSpec;
use sealroom_tests::swtpm::unique_temp_dir;

fn corpus() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/workload_documents");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 5, "corpus {}", dir.display());
    files.into_iter().map(|p| std::fs::read(p).unwrap()).collect()
}

fn mutations(seed: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![seed.to_vec()];
    for cut in [1, 2, 10, 100, 512, 513, seed.len() / 2, seed.len().saturating_sub(1)] {
        out.push(seed[..cut.min(seed.len())].to_vec());
    }
    let step = (seed.len() / 40).max(1);
    for i in (1..seed.len()).step_by(step) {
        let mut m = seed.to_vec();
        m[i] ^= 0xff;
        out.push(m);
    }
    out
}

#[test]
fn workload_documents_corpus_never_panics_and_layers_stay_inside_their_root() {
    let mut parsed = 0;
    for seed in corpus() {
        for input in mutations(&seed) {
            let (selector, rest) = input.split_first().unwrap();
            let ok = match selector % 4 {
                0 => WorkloadSpec::from_json(rest).is_ok(),
                1 => image::parse_document(rest, None).is_ok(),
                2 => image::parse_config(rest, 1).is_ok(),
                _ => {
                    let dir = unique_temp_dir("wl-fuzz");
                    let root = dir.join("root");
                    std::fs::create_dir_all(&dir).unwrap();
                    let layer = dir.join("layer.tar");
                    std::fs::write(&layer, rest).unwrap();
                    let desc = Descriptor {
                        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
                        digest: Sha256Digest::of(rest),
                        size: rest.len() as u64,
                    };
                    let ok = rootfs::unpack(&[(desc, layer)], &root).is_ok();
                    // Nothing but the layer file and the root may exist beside the root.
                    let mut names: Vec<String> = std::fs::read_dir(&dir)
                        .unwrap()
                        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                        .collect();
                    names.sort();
                    assert_eq!(names, vec!["layer.tar".to_owned(), "root".to_owned()]);
                    std::fs::remove_dir_all(&dir).unwrap();
                    ok
                }
            };
            parsed += usize::from(ok);
        }
    }
    // The well-formed seeds parse.
    assert!(parsed >= 5, "{parsed}");
}
