//! One file per subcommand; `main.rs` only parses and dispatches.

pub mod bench;
pub mod data;
pub mod eval;
pub mod experiment;
pub mod generate;
pub mod inspect;
pub mod serve;
pub mod train;
