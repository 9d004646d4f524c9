//! sealroom-measurements: the vocabulary shared by the agent and the verifier.
//!
//! What was measured (event logs, the runtime CEL log), how registers are replayed, what an image is predicted
//! to measure, and the evidence model with its nonce/key binding.
#![forbid(unsafe_code)]

pub mod binding;
pub mod broker_response;
pub mod ccel;
pub mod cel;
pub mod digest;
pub mod disk;
pub mod error;
pub mod evidence;
pub mod fuzzing;
pub mod golden;
pub mod output;
pub mod pe;
pub mod reader;
pub mod sealed;
pub mod tcg2;
pub mod uki;

pub use error::{Error, Result};
