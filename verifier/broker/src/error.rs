//! The broker reports failures with the verifier's error type: a refusal reads the same one line whether the
//! evidence or the broker's own check (nonce, key store, policy) failed.

pub use sealroom_verifier::error::{Error, Result};
